// Command perftool loads and times kvd nodes for the kvd-alone figures of
// bench/RESULTS.md: load writes N keys of random (incompressible) values in
// Txns of --batch puts; start runs a kvd command and reports how long it
// took from exec to the first successful linearizable Get sent to it.
package main

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/api/client/bench"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: perftool load|start ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "load":
		err = load(os.Args[2:])
	case "start":
		err = start(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "perftool:", err)
		os.Exit(1)
	}
}

func kvClient(ep string) kvstorev1connect.KVServiceClient {
	return kvstorev1connect.NewKVServiceClient(http.DefaultClient, "http://"+ep,
		connect.WithReadMaxBytes(64<<20), connect.WithSendMaxBytes(64<<20))
}

func load(args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	eps := fs.String("endpoints", "127.0.0.1:7379", "comma list")
	from := fs.Int("from", 0, "first key")
	n := fs.Int("n", 1000000, "keys")
	batch := fs.Int("batch", 100, "puts per txn")
	conc := fs.Int("conc", 16, "concurrent loops")
	keySize := fs.Int("key-size", 16, "key size")
	valSize := fs.Int("value-size", 256, "value size")
	fs.Parse(args)
	var clients []kvstorev1connect.KVServiceClient
	for _, e := range strings.Split(*eps, ",") {
		clients = append(clients, kvClient(e))
	}
	var next atomic.Int64
	next.Store(int64(*from))
	end := int64(*from + *n)
	var wg sync.WaitGroup
	var firstErr atomic.Pointer[error]
	t0 := time.Now()
	for i := range *conc {
		c := clients[i%len(clients)]
		wg.Go(func() {
			for firstErr.Load() == nil {
				k := next.Add(int64(*batch)) - int64(*batch)
				if k >= end {
					return
				}
				req := &kvstorev1.TxnRequest{}
				for j := k; j < min(k+int64(*batch), end); j++ {
					key := make([]byte, *keySize)
					bench.Key(key, int(j))
					val := make([]byte, *valSize)
					rand.Read(val)
					req.Success = append(req.Success, &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Put{Put: &kvstorev1.PutRequest{Key: key, Value: val}}})
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				_, err := c.Txn(ctx, connect.NewRequest(req))
				cancel()
				if err != nil {
					firstErr.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	if p := firstErr.Load(); p != nil {
		return *p
	}
	d := time.Since(t0)
	fmt.Printf("loaded %d keys in %.1fs (%.0f keys/s)\n", *n, d.Seconds(), float64(*n)/d.Seconds())
	return nil
}

// start runs the kvd command after "--" in its own process group (left
// running), logs to --log, and polls a linearizable Get of --key on
// --endpoint until one succeeds.
func start(args []string) error {
	fs := flag.NewFlagSet("start", flag.ExitOnError)
	ep := fs.String("endpoint", "127.0.0.1:7379", "node to read from")
	key := fs.String("key", "0000000000000000", "key to read")
	logPath := fs.String("log", "/dev/null", "kvd output")
	pidPath := fs.String("pidfile", "", "write the kvd pid here")
	limit := fs.Duration("limit", 120*time.Second, "give up after")
	fs.Parse(args)
	cmdline := fs.Args()
	if len(cmdline) == 0 {
		return fmt.Errorf("no kvd command")
	}
	lf, err := os.Create(*logPath)
	if err != nil {
		return err
	}
	c := kvClient(*ep)
	cmd := exec.Command(cmdline[0], cmdline[1:]...)
	cmd.Stdout, cmd.Stderr = lf, lf
	detach(cmd)
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return err
	}
	if *pidPath != "" {
		os.WriteFile(*pidPath, fmt.Appendf(nil, "%d\n", cmd.Process.Pid), 0o644)
	}
	var lastErr error
	for time.Since(t0) < *limit {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := c.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte(*key)}))
		cancel()
		if err == nil {
			fmt.Printf("pid %d: first linearizable get after %.3fs\n", cmd.Process.Pid, time.Since(t0).Seconds())
			return nil
		}
		lastErr = err
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("pid %d: no read after %v: %v", cmd.Process.Pid, *limit, lastErr)
}
