package node

import (
	"bytes"
	"context"
	"net/http"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

// benchClient speaks the Connect protocol with binary protobuf over
// HTTP/1.1, with enough idle connections for parallel benchmarks.
func benchClient(n *Node) kvstorev1connect.KVServiceClient {
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	return kvstorev1connect.NewKVServiceClient(hc, n.URL())
}

func benchNode(b *testing.B) *Node {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := startNode(b, ctx, b.TempDir())
	b.Cleanup(func() { n.Close(context.Background()) })
	return n
}

var value256 = bytes.Repeat([]byte("v"), 256)

// BenchmarkPut is the latency of one client's puts, one after another:
// each is an fsync of the raft log.
func BenchmarkPut(b *testing.B) {
	c := benchClient(benchNode(b))
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := c.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("key" + strconv.Itoa(i%10000)), Value: value256})); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPutParallel64 runs 64 concurrent clients; raft batches their
// entries into shared log appends.
func BenchmarkPutParallel64(b *testing.B) {
	c := benchClient(benchNode(b))
	ctx := context.Background()
	var seq atomic.Int64
	b.SetParallelism(max(1, 64/testingProcs()))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := seq.Add(1)
			if _, err := c.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("key" + strconv.FormatInt(i%100000, 10)), Value: value256})); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "puts/s")
}

func benchGet(b *testing.B, c kvstorev1.Consistency) {
	cl := benchClient(benchNode(b))
	ctx := context.Background()
	for i := range 1000 {
		if _, err := cl.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("key" + strconv.Itoa(i)), Value: value256})); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if _, err := cl.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("key" + strconv.Itoa(i%1000)), Consistency: c})); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGetLinearizable is one client's linearizable reads: a read index
// round, no raft log write.
func BenchmarkGetLinearizable(b *testing.B) {
	benchGet(b, kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE)
}

// BenchmarkGetSerializable is one client's local reads.
func BenchmarkGetSerializable(b *testing.B) {
	benchGet(b, kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE)
}

// BenchmarkStartEmptyNode is the time from Start to a node that serves
// linearizable requests, on a fresh data dir, with the default raft
// timing (a one-node cluster still waits out one election timeout).
func BenchmarkStartEmptyNode(b *testing.B) {
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		n, err := Start(ctx, Config{DataDir: b.TempDir(), Listen: "127.0.0.1:0"})
		if err != nil {
			b.Fatal(err)
		}
		if err := n.WaitReady(ctx); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		n.Close(ctx)
		cancel()
		b.StartTimer()
	}
}

func testingProcs() int { return runtime.GOMAXPROCS(0) }
