package nodetest_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kvstore/kvstore/node/nodetest"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// BenchmarkClusterPut64 measures puts from 64 concurrent gRPC clients on
// a 3-node cluster: spread over every node (two thirds of the writes are
// forwarded by a follower to the leader) and all sent to the leader. Run
// both side by side: the difference is the cost of forwarding. Besides
// ns/op (wall time per put at this concurrency) it reports cpu-us/op, the
// process's CPU per put: the whole cluster and its clients run in this
// process, so the figure compares builds, not systems.
func BenchmarkClusterPut64(b *testing.B) {
	c := nodetest.NewCluster(b, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	leader := c.Leader(ctx)
	if leader == nil {
		b.Fatal("no leader")
	}
	conns := make(map[string]kvstorev1.KVServiceClient)
	for _, nd := range c.Nodes() {
		cc, err := grpc.NewClient(nd.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = cc.Close() })
		conns[nd.Name()] = kvstorev1.NewKVServiceClient(cc)
	}
	spread := make([]kvstorev1.KVServiceClient, 0, len(conns))
	for _, nd := range c.Nodes() {
		spread = append(spread, conns[nd.Name()])
	}
	for _, tc := range []struct {
		name    string
		targets []kvstorev1.KVServiceClient
	}{
		{"spread", spread},
		{"leader", []kvstorev1.KVServiceClient{conns[leader.Name()]}},
	} {
		b.Run(tc.name, func(b *testing.B) { putConcurrently(b, tc.targets, 64) })
	}
}

// putConcurrently runs b.N puts of 256 B values over 100,000 keys from
// clients goroutines, client i sending to targets[i%len(targets)].
func putConcurrently(b *testing.B, targets []kvstorev1.KVServiceClient, clients int) {
	value := bytes.Repeat([]byte("v"), 256)
	var next atomic.Int64
	errs := make(chan error, clients)
	cpu0 := processCPU()
	b.ResetTimer()
	for i := range clients {
		go func() {
			kv := targets[i%len(targets)]
			rng := rand.New(rand.NewPCG(uint64(i), 1))
			for next.Add(1) <= int64(b.N) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				key := fmt.Appendf(nil, "bench/%06d", rng.IntN(100000))
				_, err := kv.Put(ctx, &kvstorev1.PutRequest{Key: key, Value: value})
				cancel()
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range clients {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
}

// processCPU is the user and system CPU time this process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
