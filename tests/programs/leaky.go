// A Go program whose method leaks connections, for the stack tests: Go's symbols carry their
// receiver (`main.(*Pool).open`), which the text report must keep.
// Waits for "go" on stdin, starts a server, opens N connections to it through a method and
// never closes them, prints "ok PORT", then holds everything until stdin closes. With
// `unix PATH` after N, the connections are UNIX stream ones to PATH (a server already there),
// and it prints "ok".
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strconv"
)

type Pool struct {
	network string
	addr    string
	conns   []net.Conn
}

//go:noinline
func (p *Pool) open(n int) {
	for i := 0; i < n; i++ {
		c, err := net.Dial(p.network, p.addr) // LEAK SITE
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		p.conns = append(p.conns, c) // kept, never closed: the leak
	}
}

func main() {
	n, _ := strconv.Atoi(os.Args[1])
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() {
		os.Exit(1)
	}
	if len(os.Args) == 4 && os.Args[2] == "unix" {
		p := &Pool{network: "unix", addr: os.Args[3]}
		p.open(n)
		fmt.Println("ok")
		for in.Scan() {
		}
		return
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go func() {
		var held []net.Conn
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	p := &Pool{network: "tcp", addr: l.Addr().String()}
	p.open(n)
	fmt.Printf("ok %d\n", l.Addr().(*net.TCPAddr).Port)
	for in.Scan() {
	}
}
