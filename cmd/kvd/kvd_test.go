package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

// kvdBinary is built once by TestMain: these tests run the real program.
var kvdBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kvd-test-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	kvdBinary = filepath.Join(dir, "kvd")
	build := exec.Command("go", "build", "-o", kvdBinary, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build kvd:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type proc struct {
	cmd  *exec.Cmd
	addr string
	done chan error
}

// startKVD runs kvd on a free loopback port and returns once it has said
// where it listens.
func startKVD(t *testing.T, ctx context.Context, dataDir string, extra ...string) *proc {
	t.Helper()
	args := append([]string{"--data-dir", dataDir, "--listen", "127.0.0.1:0", "--log-format", "json"}, extra...)
	cmd := exec.Command(kvdBinary, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, done: make(chan error, 1)}
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
	})
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sent := false
		for sc.Scan() {
			var line struct {
				Msg       string `json:"msg"`
				Advertise string `json:"advertise"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "node started" && !sent {
				addrc <- line.Advertise
				sent = true
			}
			t.Logf("kvd: %s", sc.Bytes())
		}
		io.Copy(io.Discard, stderr)
		p.done <- cmd.Wait()
	}()
	select {
	case p.addr = <-addrc:
	case err := <-p.done:
		p.done <- err
		t.Fatalf("kvd exited before it started: %v", err)
	case <-ctx.Done():
		t.Fatal("kvd did not start in time")
	}
	return p
}

func (p *proc) client() kvstorev1connect.KVServiceClient {
	return kvstorev1connect.NewKVServiceClient(http.DefaultClient, "http://"+p.addr)
}

// waitReady polls /readyz until the node has a leader.
func waitReady(t *testing.T, ctx context.Context, addr string) {
	t.Helper()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("node at %s not ready: %v", addr, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestSIGKILLKeepsAcknowledgedWrites kills kvd with SIGKILL right after
// writes were acknowledged; a new process on the same data dir has them all.
func TestSIGKILLKeepsAcknowledgedWrites(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()

	p := startKVD(t, ctx, dir)
	waitReady(t, ctx, p.addr)
	c := p.client()
	const n = 200
	for i := range n {
		_, err := c.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{
			Key:   []byte("k" + strconv.Itoa(i)),
			Value: []byte("v" + strconv.Itoa(i)),
		}))
		if err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
	p.done <- nil

	p2 := startKVD(t, ctx, dir)
	waitReady(t, ctx, p2.addr)
	c2 := p2.client()
	for i := range n {
		resp, err := c2.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("k" + strconv.Itoa(i))}))
		if err != nil {
			t.Fatalf("get %d after SIGKILL: %v", i, err)
		}
		if got, want := string(resp.Msg.GetKv().GetValue()), "v"+strconv.Itoa(i); got != want {
			t.Fatalf("key %d after SIGKILL: got %q, want %q", i, got, want)
		}
	}
}

// TestSIGTERMStopsCleanly checks a graceful stop exits 0 and the data is
// there after.
func TestSIGTERMStopsCleanly(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()

	p := startKVD(t, ctx, dir, "--name", "n1")
	waitReady(t, ctx, p.addr)
	if _, err := p.client().Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("a"), Value: []byte("1")})); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			t.Fatalf("kvd exited with %v after SIGTERM", err)
		}
	case <-ctx.Done():
		t.Fatal("kvd did not stop after SIGTERM")
	}

	// The stored identity wins over nothing, and a different --name is refused.
	bad := exec.CommandContext(ctx, kvdBinary, "--data-dir", dir, "--listen", "127.0.0.1:0", "--name", "other")
	out, err := bad.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("kvd with another --name: err %v, output %s", err, out)
	}

	p2 := startKVD(t, ctx, dir)
	waitReady(t, ctx, p2.addr)
	resp, err := p2.client().Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("a")}))
	if err != nil {
		t.Fatal(err)
	}
	if string(resp.Msg.GetKv().GetValue()) != "1" || resp.Msg.GetHeader().GetNodeId() != "n1" {
		t.Fatalf("after restart: %v", resp.Msg)
	}
}

func TestFlagsAndEnv(t *testing.T) {
	t.Setenv("KVD_DATA_DIR", "/from/env")
	t.Setenv("KVD_LISTEN", "127.0.0.1:1")
	o, err := parseFlags([]string{"--listen", "127.0.0.1:2", "--max-key-bytes", "100"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.node.DataDir != "/from/env" || o.node.Listen != "127.0.0.1:2" || o.node.Limits.MaxKeyBytes != 100 {
		t.Fatalf("got %+v", o.node)
	}
	t.Setenv("KVD_MAX_VALUE_BYTES", "lots")
	if _, err := parseFlags(nil, io.Discard); err == nil {
		t.Fatal("bad env value accepted")
	}
	if _, err := parseFlags([]string{"extra"}, io.Discard); err == nil {
		t.Fatal("stray argument accepted")
	}
	if _, err := newLogger(io.Discard, "xml", "info"); err == nil {
		t.Fatal("bad log format accepted")
	}
	if _, err := newLogger(io.Discard, "json", "loud"); err == nil {
		t.Fatal("bad log level accepted")
	}
}

// TestBadFlagsTouchNoDisk: every flag is checked before kvd creates or
// opens anything: a bad value exits 2 with a message naming the flag, and
// the data dir it would have created does not exist.
func TestBadFlagsTouchNoDisk(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--bootstrap-expect", "-1"}, `invalid value "-1" for flag -bootstrap-expect: want a whole number, at least 0`},
		{[]string{"--max-voters", "0"}, `invalid value "0" for flag -max-voters: want a whole number, at least 1`},
		{[]string{"--dead-after", "banana"}, `invalid value "banana" for flag -dead-after: want a duration such as 30s or 2m`},
		{[]string{"--dead-after", "-1s"}, `invalid value "-1s" for flag -dead-after: want a positive duration`},
		{[]string{"--request-timeout", "0s"}, `flag -request-timeout: want a positive duration`},
		{[]string{"--raft-timeout", "1ms"}, `flag -raft-timeout: want a duration of at least 10ms`},
		{[]string{"--raft-timeout", "soon"}, "want a duration"},
		{[]string{"--max-key-bytes", "-5"}, `flag -max-key-bytes: want a whole number, at least 1`},
		{[]string{"--max-key-bytes", "lots"}, `invalid value "lots" for flag -max-key-bytes: want a whole number`},
		{[]string{"--max-value-bytes", "0"}, `flag -max-value-bytes: want a whole number, at least 1`},
		{[]string{"--max-request-bytes", "-1"}, `flag -max-request-bytes: want a whole number, at least 1`},
		{[]string{"--max-range-pairs", "0"}, `flag -max-range-pairs: want a whole number, at least 1`},
		{[]string{"--max-txn-ops", "0"}, `flag -max-txn-ops: want a whole number, at least 1`},
		{[]string{"--listen", "banana"}, `--listen "banana": want host:port`},
		{[]string{"--advertise", "0.0.0.0:7379"}, `--advertise "0.0.0.0:7379": other nodes cannot dial a wildcard address`},
		{[]string{"--join", "127.0.0.1:99999"}, `--join "127.0.0.1:99999": port "99999" is not a number from 1 to 65535`},
		{[]string{"--auto-compact-retention", "forever"}, "auto-compact-retention"},
		{[]string{"--log-level", "loud"}, "--log-level"},
		{[]string{"--log-format", "xml"}, "--log-format"},
		{[]string{"--gossip-key", "short"}, "--gossip-key"},
		{[]string{"--name", "a b"}, `--name "a b": a node id has no spaces or slashes`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "new", "data")
			cmd := exec.CommandContext(ctx, kvdBinary, append([]string{"--data-dir", dir, "--listen", "127.0.0.1:0"}, tc.args...)...)
			if tc.args[0] == "--listen" {
				cmd.Args = append([]string{kvdBinary, "--data-dir", dir}, tc.args...)
			}
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 2 {
				t.Fatalf("err %v, want exit status 2; output:\n%s", err, out)
			}
			if !strings.Contains(string(out), tc.msg) {
				t.Errorf("output %q does not say %q", out, tc.msg)
			}
			if _, err := os.Stat(filepath.Dir(dir)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a bad flag left %s behind (stat: %v)", filepath.Dir(dir), err)
			}
		})
	}
}

// TestFailedStartLeavesNoDataDir: a start that fails after the flags were
// accepted (here: the port is taken) removes the data dir it created, and
// leaves one that existed before as it was.
func TestFailedStartLeavesNoDataDir(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()

	dir := filepath.Join(t.TempDir(), "new", "data")
	out, err := exec.CommandContext(ctx, kvdBinary, "--data-dir", dir, "--listen", taken.Addr().String()).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("err %v, want exit status 1; output:\n%s", err, out)
	}
	if !strings.Contains(string(out), "address already in use") {
		t.Errorf("output does not say the port is taken:\n%s", out)
	}
	if _, err := os.Stat(filepath.Dir(dir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed start left %s behind (stat: %v)", filepath.Dir(dir), err)
	}

	// A data dir that was there stays, with what it held.
	old := t.TempDir()
	if err := os.WriteFile(filepath.Join(old, "node-id"), []byte("n1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = exec.CommandContext(ctx, kvdBinary, "--data-dir", old, "--listen", taken.Addr().String()).CombinedOutput()
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("err %v, want exit status 1; output:\n%s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(old, "node-id")); err != nil || string(b) != "n1\n" {
		t.Errorf("the existing data dir changed: node-id %q, %v", b, err)
	}
}

// TestCalledAsKvctl: the binary run under the name kvctl is kvctl (the
// container image holds one binary under both names), and kvctl health
// says whether a node is ready.
func TestCalledAsKvctl(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := startKVD(t, ctx, t.TempDir())
	waitReady(t, ctx, p.addr)

	kvctl := filepath.Join(t.TempDir(), "kvctl")
	if err := os.Symlink(kvdBinary, kvctl); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, kvctl, "--endpoints", p.addr, "put", "k", "v").CombinedOutput()
	if err != nil || string(out) != "OK\n" {
		t.Fatalf("kvctl put: %v, %q", err, out)
	}
	for _, args := range [][]string{{"health"}, {"health", "--live"}} {
		out, err = exec.CommandContext(ctx, kvctl, append([]string{"--endpoints", p.addr}, args...)...).CombinedOutput()
		if err != nil || string(out) != p.addr+" ok\n" {
			t.Fatalf("kvctl %v: %v, %q", args, err, out)
		}
	}
	// A node that does not answer is not healthy: exit 1.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	out, err = exec.CommandContext(ctx, kvctl, "--endpoints", dead, "health", "--timeout", "2s").CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("kvctl health on a closed port: %v, %q; want exit 1", err, out)
	}
}
