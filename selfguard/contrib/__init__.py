"""Optional exporters of selfguard's counters; each module needs its extra (selfguard[prometheus], selfguard[otel])."""
