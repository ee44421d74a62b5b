package nodetest_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/node/nodetest"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// ackLog records when puts were acknowledged, from clients writing keys
// under a prefix through every node until stopped.
type ackLog struct {
	mu   sync.Mutex
	acks []time.Time
	stop func()
	wg   sync.WaitGroup
}

func writeUnder(ctx context.Context, c *nodetest.Cluster, prefix string, clients int) *ackLog {
	l := &ackLog{}
	ctx, l.stop = context.WithCancel(ctx)
	for i := range clients {
		kv := c.Nodes()[i%len(c.Nodes())].Client().KV
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for j := 0; ctx.Err() == nil; j++ {
				if _, err := put(ctx, kv, fmt.Sprintf("%sw%d/%d", prefix, i, j%1000), "v"); err == nil {
					l.mu.Lock()
					l.acks = append(l.acks, time.Now())
					l.mu.Unlock()
				}
			}
		}()
	}
	return l
}

// window returns the puts acknowledged in [from, to] and the longest time
// in it without one.
func (l *ackLog) window(from, to time.Time) (n int, pause time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	last := from
	for _, t := range l.acks {
		if t.Before(from) || t.After(to) {
			continue
		}
		n++
		pause = max(pause, t.Sub(last))
		last = t
	}
	return n, max(pause, to.Sub(last))
}

func (l *ackLog) close() {
	l.stop()
	l.wg.Wait()
}

// BenchmarkGroupMove moves a data group from n1..n3 to n3..n5 of a 5-node
// cluster while 32 clients put its keys through every node, b.N times
// back and forth. It reports the puts per second in the 2 s before each
// move and during it, the move's duration, and the longest time during
// the moves in which no put was acknowledged (the write pause). Run with
// -benchtime 3x.
func BenchmarkGroupMove(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c := nodetest.NewCluster(b, 5)
	if _, err := c.Node("n1").Client().Cluster.CreateGroup(ctx, connect.NewRequest(&kvstorev1.CreateGroupRequest{
		Name: "b", Start: []byte("/b/"), End: []byte("/b0"), Replicas: []string{"n1", "n2", "n3"},
	})); err != nil {
		b.Fatal(err)
	}
	l := writeUnder(ctx, c, "/b/", 32)
	defer l.close()
	targets := [][]string{{"n3", "n4", "n5"}, {"n1", "n2", "n3"}}
	var before, during, took float64
	var pause time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		time.Sleep(2 * time.Second) // the window measured before the move
		start := time.Now()
		nb, _ := l.window(start.Add(-2*time.Second), start)
		if _, err := c.Node("n2").Client().Cluster.MoveGroup(ctx, connect.NewRequest(&kvstorev1.MoveGroupRequest{Name: "b", Replicas: targets[i%2]})); err != nil {
			b.Fatalf("move %d: %v", i, err)
		}
		end := time.Now()
		nd, p := l.window(start, end)
		before += float64(nb) / 2
		during += float64(nd) / end.Sub(start).Seconds()
		took += end.Sub(start).Seconds()
		pause = max(pause, p)
	}
	b.StopTimer()
	b.ReportMetric(before/float64(b.N), "puts/s-before")
	b.ReportMetric(during/float64(b.N), "puts/s-during")
	b.ReportMetric(took/float64(b.N), "move-s")
	b.ReportMetric(float64(pause.Milliseconds()), "max-pause-ms")
}

// BenchmarkGroupCreateOverKeys gives a range holding KVSTORE_BENCH_KEYS
// keys (default 100,000; 100-byte values) to a new group on a 3-node
// cluster while 16 clients put keys of the range through every node. It
// reports how long the create took and the longest time in which no put
// to the range was acknowledged: the freeze, the copy on each replica,
// the new group's election and the switch. Run with -benchtime 1x.
func BenchmarkGroupCreateOverKeys(b *testing.B) {
	keys := 100_000
	if v, err := strconv.Atoi(os.Getenv("KVSTORE_BENCH_KEYS")); err == nil && v > 0 {
		keys = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	var took float64
	var pause time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		c := nodetest.NewCluster(b, 3)
		n1 := c.Node("n1")
		kv := n1.Client().KV
		value := make([]byte, 100)
		var wg sync.WaitGroup
		for w := range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := w; k < keys; k += 32 {
					var err error
					for try := 0; try < 10; try++ { // an overloaded node may refuse a put
						if _, err = kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: fmt.Appendf(nil, "/c/%08d", k), Value: value})); err == nil {
							break
						}
					}
					if err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		l := writeUnder(ctx, c, "/c/", 16)
		time.Sleep(time.Second) // writes flowing before the create
		b.StartTimer()
		start := time.Now()
		if _, err := n1.Client().Cluster.CreateGroup(ctx, connect.NewRequest(&kvstorev1.CreateGroupRequest{
			Name: "c", Start: []byte("/c/"), End: []byte("/c0"), Replicas: []string{"n1", "n2", "n3"},
		})); err != nil {
			b.Fatal(err)
		}
		end := time.Now()
		b.StopTimer()
		time.Sleep(time.Second) // writes flowing after the switch
		_, p := l.window(start, time.Now())
		l.close()
		took += end.Sub(start).Seconds()
		pause = max(pause, p)
	}
	b.ReportMetric(float64(keys), "keys")
	b.ReportMetric(took/float64(b.N), "create-s")
	b.ReportMetric(float64(pause.Milliseconds()), "max-pause-ms")
}
