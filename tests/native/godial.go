// A Go reconnect loop for `selfguard watch`'s tests: dials 127.0.0.1:PORT DIALS times with
// net.Dial. Go's dialer closes a self-connected conn and dials again (at most twice more),
// so the program itself never sees one; it prints how many dials it got a conn from that was
// connected to itself (0, unless Go relented) and its pid, then lives on 1 s.
package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

func main() {
	port, _ := strconv.Atoi(os.Args[1])
	dials, _ := strconv.Atoi(os.Args[2])
	address := fmt.Sprintf("127.0.0.1:%d", port)
	met := 0
	for i := 0; i < dials; i++ {
		conn, err := net.Dial("tcp", address)
		if err != nil {
			continue
		}
		if conn.LocalAddr().String() == conn.RemoteAddr().String() {
			met++
		}
		conn.Close()
	}
	fmt.Printf("{\"pid\": %d, \"self_connects\": %d}\n", os.Getpid(), met)
	time.Sleep(time.Second)
}
