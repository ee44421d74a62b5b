package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

// killRounds is how many times TestSIGKILLUnderLoad kills kvd:
// $KVD_KILL_ROUNDS, or a short run of 8 by default (the long run is
// 200; README names the command).
func killRounds() int {
	if n, err := strconv.Atoi(os.Getenv("KVD_KILL_ROUNDS")); err == nil && n > 0 {
		return n
	}
	return 8
}

// TestSIGKILLUnderLoad kills a kvd process with SIGKILL while eight clients
// put, many times over on one data dir. After every kill kvd starts again
// (its raft log and state open), serves every put it acknowledged before,
// with its value, and never a revision below one it acknowledged; a put
// whose answer the kill cut off may or may not be there, and if it is, it
// holds its value. Keys are unique, so each key has one possible value.
func TestSIGKILLUnderLoad(t *testing.T) {
	rounds := killRounds()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rounds)*20*time.Second+time.Minute)
	defer cancel()
	dir := t.TempDir()
	args := []string{"--name", "victim"}

	acked := map[string]int64{} // key -> revision of its acknowledged put
	var maxRev int64
	start := time.Now()
	for round := range rounds {
		p := startKVD(t, ctx, dir, args...)
		waitReady(t, ctx, p.addr)
		c := p.client()
		// Every acknowledged write is there.
		checkAckedAfterKill(t, ctx, c, acked, maxRev, fmt.Sprintf("round %d", round))

		// Load, then a kill in the middle of it.
		stop := make(chan struct{})
		var mu sync.Mutex
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for seq := 0; ; seq++ {
					select {
					case <-stop:
						return
					default:
					}
					k := fmt.Sprintf("w%03d-%d-%d", round, w, seq)
					resp, err := c.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte(k), Value: []byte(valueOf(k))}))
					if err != nil {
						return // cut off by the kill: unknown
					}
					mu.Lock()
					rev := resp.Msg.GetHeader().GetRevision()
					acked[k] = rev
					maxRev = max(maxRev, rev)
					mu.Unlock()
				}
			}()
		}
		time.Sleep(time.Duration(100+rand.IntN(400)) * time.Millisecond)
		if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-p.done
		p.done <- nil
		close(stop)
		wg.Wait()
		if ctx.Err() != nil {
			t.Fatalf("round %d: out of time", round)
		}
	}
	// And once more: the last kill's writes.
	p := startKVD(t, ctx, dir, args...)
	waitReady(t, ctx, p.addr)
	checkAckedAfterKill(t, ctx, p.client(), acked, maxRev, "after the last kill")
	t.Logf("%d SIGKILLs under load in %v: %d acknowledged puts, all there after every restart; last revision %d",
		rounds, time.Since(start).Round(time.Second), len(acked), maxRev)
}

// checkAckedAfterKill reads every key under w through c, one page after another
// at one revision, and fails unless each holds its value, every key in
// acked is there, and the revision is no lower than maxRev.
func checkAckedAfterKill(t *testing.T, ctx context.Context, c kvstorev1connect.KVServiceClient, acked map[string]int64, maxRev int64, when string) {
	t.Helper()
	found := map[string]bool{}
	var rev int64
	for key := []byte("w"); len(key) > 0; {
		resp, err := c.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: key, RangeEnd: []byte("x"), Revision: rev}))
		if err != nil {
			t.Fatalf("%s: range after restart: %v", when, err)
		}
		rev = resp.Msg.GetHeader().GetRevision()
		for _, kv := range resp.Msg.GetKvs() {
			k := string(kv.GetKey())
			if want := valueOf(k); string(kv.GetValue()) != want {
				t.Fatalf("%s: %s holds %q, want %q", when, k, kv.GetValue(), want)
			}
			found[k] = true
		}
		key = resp.Msg.GetNextKey()
	}
	if rev < maxRev {
		t.Fatalf("%s: revision %d after restart, below the acknowledged %d", when, rev, maxRev)
	}
	for k, r := range acked {
		if !found[k] {
			t.Fatalf("%s: %s, acknowledged at revision %d, is gone after a SIGKILL", when, k, r)
		}
	}
}

// valueOf is the one value key k is ever written with.
func valueOf(k string) string { return "v:" + strings.Repeat(k, 4) }
