"""The operator's side: the `selfguard` command and its subcommands (repro, doctor, run, sitecustomize, watch).

Nothing here runs inside a guarded process: the guard itself (the modules
beside this package) never imports it, so its import cost and its failures
stay with the command.
"""
