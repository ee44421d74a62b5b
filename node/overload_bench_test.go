package node

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// holdEnv tells TestHoldConnections (in a child process) where to connect
// and how many connections to hold: "addr,silent,idleHTTP".
const holdEnv = "KVSTORE_HOLD_CONNECTIONS"

// TestHoldConnections is BenchmarkIdleConnections' other process: it opens
// the connections, says "ready" on stdout, and holds them until its stdin
// closes. Without holdEnv it does nothing. In a process of its own, the
// node's process holds only its own ends, and its RSS is the node's.
func TestHoldConnections(t *testing.T) {
	spec := os.Getenv(holdEnv)
	if spec == "" {
		t.Skip("the other process of BenchmarkIdleConnections")
	}
	parts := strings.Split(spec, ",")
	silent, _ := strconv.Atoi(parts[1])
	idleHTTP, _ := strconv.Atoi(parts[2])
	raiseFileLimit()
	var conns []net.Conn
	answered := 0
	for i := range silent + idleHTTP {
		c, err := net.DialTimeout("tcp", parts[0], 10*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, c)
		if i >= silent {
			// A keep-alive request, read to its end: then idle.
			c.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
			if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
				io.Copy(io.Discard, resp.Body)
				if resp.StatusCode == http.StatusOK {
					answered++
				}
			}
			c.SetDeadline(time.Time{})
		}
	}
	fmt.Printf("ready %d %d\n", len(conns), answered)
	io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
}

// raiseFileLimit raises the soft limit on open files to the hard one.
func raiseFileLimit() {
	var lim syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim) == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
}

// vmRSS is this process's resident set, from /proc/self/status, in KiB.
func vmRSS(tb testing.TB) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		tb.Skip("no /proc/self/status")
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb
		}
	}
	tb.Skip("no VmRSS")
	return 0
}

// BenchmarkIdleConnections holds 10,000 idle connections to a node from
// another process (half that never send a byte, half HTTP/1.1 keep-alive
// connections idle after one request), then measures puts and gets from a
// client of its own while they are held. It reports the node process's RSS
// before and with them, what the node kept of them (its caps: 1,024 not
// routed, 4,096 HTTP), and the puts and gets per second:
//
//	go test -run '^$' -bench IdleConnections -benchtime 1x ./node
func BenchmarkIdleConnections(b *testing.B) {
	const silent, idleHTTP = 5_000, 5_000
	raiseFileLimit()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n := startNode(b, ctx, b.TempDir())
	defer n.Close(context.Background())
	kv := kvClient(n)
	ops := func(count int) (time.Duration, int) {
		start, failed := time.Now(), 0
		for i := range count {
			key := []byte(fmt.Sprintf("k%d", i%100))
			if _, err := kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: key, Value: []byte("v")})); err != nil {
				failed++
			}
			if _, err := kv.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: key})); err != nil {
				failed++
			}
		}
		return time.Since(start), failed
	}
	ops(200) // warm
	runtime.GC()
	before := vmRSS(b)
	baseline, _ := ops(500)

	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHoldConnections$", "-test.count=1")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%d,%d", holdEnv, n.Addr(), silent, idleHTTP))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	var opened, answered int
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if _, err := fmt.Sscanf(sc.Text(), "ready %d %d", &opened, &answered); err == nil {
			break
		}
	}
	if opened == 0 {
		b.Fatalf("the other process opened no connections: %v", sc.Err())
	}
	go io.Copy(io.Discard, stdout)

	b.ResetTimer()
	during, failed := ops(500)
	b.StopTimer()
	runtime.GC()
	with := vmRSS(b)
	pending, httpOpen := n.mux.pending(), n.mux.open(0)
	b.Logf("%d connections opened by the other process (%d silent, %d idle HTTP, %d of which answered); the node keeps %d not routed and %d HTTP",
		opened, silent, idleHTTP, answered, pending, httpOpen)
	b.Logf("node process RSS: %d MiB before, %d MiB with them; 500 puts+gets: %v alone, %v with them (%d failed); %d goroutines",
		before>>10, with>>10, baseline.Round(time.Millisecond), during.Round(time.Millisecond), failed, runtime.NumGoroutine())
	b.ReportMetric(float64(before>>10), "rss-before-MiB")
	b.ReportMetric(float64(with>>10), "rss-with-MiB")
	b.ReportMetric(float64(1000)/during.Seconds(), "ops/s-with")
	b.ReportMetric(float64(1000)/baseline.Seconds(), "ops/s-alone")
	if failed > 0 {
		b.Fatalf("%d of 1000 calls failed while the connections were held", failed)
	}
}
