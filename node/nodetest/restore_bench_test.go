package nodetest_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/api/client"
	"github.com/kvstore/kvstore/node"
	"github.com/kvstore/kvstore/node/nodetest"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// BenchmarkSnapshotRestore measures a backup's three steps on a node
// holding KVSTORE_BENCH_KEYS keys (default 10,000) of 256 B values:
// saving a snapshot to a file (save-s), preparing a data dir from it
// (restore-s), and starting a node on that dir until it has answered its
// first linearizable read (start-to-read-s); restore-to-serving-s is the
// last two together. Loading the keys is not timed. Run it once:
//
//	KVSTORE_BENCH_KEYS=1000000 go test -run '^$' -bench SnapshotRestore -benchtime 1x -timeout 30m ./node/nodetest
func BenchmarkSnapshotRestore(b *testing.B) {
	keys := 10_000
	if s := os.Getenv("KVSTORE_BENCH_KEYS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("KVSTORE_BENCH_KEYS=%q: want a positive number", s)
		}
		keys = n
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	src := nodetest.NewCluster(b, 1, nodetest.WithLogger(slog.New(slog.DiscardHandler)),
		nodetest.WithConfig(func(_ string, cfg *node.Config) { cfg.Retention.Age = 0 }))
	cl := src.Client()
	load(b, ctx, cl, keys)

	dir := b.TempDir()
	for i := 0; i < b.N; i++ {
		file := filepath.Join(dir, fmt.Sprintf("backup-%d.snap", i))
		t0 := time.Now()
		snap, err := saveSnapshot(ctx, cl, file)
		if err != nil {
			b.Fatal(err)
		}
		save := time.Since(t0)
		if snap.Keys != int64(keys) {
			b.Fatalf("the snapshot holds %d keys, want %d", snap.Keys, keys)
		}
		t1 := time.Now()
		data := filepath.Join(dir, fmt.Sprintf("restored-%d", i))
		if _, err := node.Restore(node.RestoreConfig{From: file, DataDir: data, Name: "r1",
			Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))}); err != nil {
			b.Fatal(err)
		}
		restore := time.Since(t1)
		t2 := time.Now()
		n, err := node.Start(ctx, node.Config{DataDir: data, Listen: "127.0.0.1:0", Name: "r1", Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		rc, err := client.New([]string{n.Addr()})
		if err != nil {
			b.Fatal(err)
		}
		err = pollUntil(ctx, func() error {
			_, err := rc.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("bench/00000000")}))
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		firstRead := time.Since(t2)
		rc.Close()
		cctx, ccancel := context.WithTimeout(ctx, time.Minute)
		n.Close(cctx)
		ccancel()
		st, _ := os.Stat(file)
		b.ReportMetric(save.Seconds(), "save-s")
		b.ReportMetric(restore.Seconds(), "restore-s")
		b.ReportMetric(firstRead.Seconds(), "start-to-read-s")
		b.ReportMetric((restore + firstRead).Seconds(), "restore-to-serving-s")
		b.ReportMetric(float64(st.Size())/(1<<20), "file-MiB")
		os.Remove(file)
		os.RemoveAll(data)
	}
}

// load puts keys of 256 B values, 128 a transaction, from 8 clients.
func load(b *testing.B, ctx context.Context, cl *client.Client, keys int) {
	b.Helper()
	const perTxn, workers = 128, 8
	value := make([]byte, 256)
	for i := range value {
		value[i] = byte('a' + i%26)
	}
	next := make(chan int)
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for from := range next {
				txn := &kvstorev1.TxnRequest{}
				for k := from; k < min(from+perTxn, keys); k++ {
					txn.Success = append(txn.Success, &kvstorev1.RequestOp{Request: &kvstorev1.RequestOp_Put{
						Put: &kvstorev1.PutRequest{Key: fmt.Appendf(nil, "bench/%08d", k), Value: value}}})
				}
				if _, err := cl.KV.Txn(ctx, connect.NewRequest(txn)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	start := time.Now()
feed:
	for from := 0; from < keys; from += perTxn {
		select {
		case next <- from:
		case err := <-errs:
			b.Fatal(err)
			break feed
		}
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	b.Logf("loaded %d keys in %v", keys, time.Since(start).Round(time.Millisecond))
}
