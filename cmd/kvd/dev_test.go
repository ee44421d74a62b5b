package main

import (
	"bufio"
	"context"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// freePorts finds n consecutive free TCP and UDP ports on 127.0.0.1.
func freePorts(t *testing.T, n int) int {
	t.Helper()
	for try := 0; try < 50; try++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		base := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		ok := base+n < 65536
		for p := base; ok && p < base+n; p++ {
			a := net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
			l, err := net.Listen("tcp", a)
			if err != nil {
				ok = false
				break
			}
			u, err := net.ListenPacket("udp", a)
			l.Close()
			if err != nil {
				ok = false
				break
			}
			u.Close()
		}
		if ok {
			return base
		}
	}
	t.Fatal("no free consecutive ports")
	return 0
}

// TestDevStartsAndStopsCleanly: kvd dev with its default flags says at INFO
// when its cluster is ready, and a Ctrl-C stops it with exit 0 and not one
// ERROR line (the nodes used to be closed under a running leader, which
// logged a dozen failed heartbeats).
func TestDevStartsAndStopsCleanly(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	port := freePorts(t, 3)
	cmd := exec.Command(kvdBinary, "dev", "--port", strconv.Itoa(port))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		lines []string
	)
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			line := sc.Text()
			mu.Lock()
			lines = append(lines, line)
			mu.Unlock()
			if strings.Contains(line, "level=INFO") && strings.Contains(line, `msg="dev cluster ready`) {
				once.Do(func() { close(ready) })
			}
		}
		done <- cmd.Wait()
	}()
	output := func() string {
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(lines, "\n")
	}
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("kvd dev exited before it was ready: %v\n%s", err, output())
	case <-ctx.Done():
		cmd.Process.Kill()
		t.Fatalf("no INFO line saying the cluster is ready:\n%s", output())
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("kvd dev after Ctrl-C: %v\n%s", err, output())
		}
	case <-ctx.Done():
		cmd.Process.Kill()
		t.Fatalf("kvd dev did not stop:\n%s", output())
	}
	for _, line := range strings.Split(output(), "\n") {
		if strings.Contains(line, "level=ERROR") {
			t.Errorf("ERROR while starting or stopping: %s", line)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", output())
	}
}
