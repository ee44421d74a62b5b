package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
)

// preloadAttempts bounds the tries of one preload put that keeps failing
// with a transient error.
const preloadAttempts = 6

// transientCodes are the codes of failures worth another try: a leader
// election or a busy cluster, not a bad request.
var transientCodes = map[string]bool{
	connect.CodeUnavailable.String():       true,
	connect.CodeDeadlineExceeded.String():  true,
	connect.CodeResourceExhausted.String(): true,
	connect.CodeAborted.String():           true,
}

// Preload writes every key of cfg's keyspace once, with a value of cfg's
// value size, from concurrency loops spread over targets, so that reads
// find keys. Nothing is measured.
//
// A put that fails with a transient error (Unavailable, DeadlineExceeded,
// ResourceExhausted, Aborted, as named by cfg.ErrorCode) is tried again
// with backoff, up to preloadAttempts times: a preload of a busy cluster
// may meet a leader election, and a repeated put writes the same value
// whether or not the failed one was applied. Any other failure, or one
// that outlasts the tries, stops the preload with its error.
func Preload(ctx context.Context, cfg Config, targets []Target, concurrency int) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	if len(targets) == 0 {
		return errors.New("bench: no targets")
	}
	concurrency = max(concurrency, 1)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var next atomic.Int64
	var wg sync.WaitGroup
	for i := range concurrency {
		t := targets[i%len(targets)]
		wg.Go(func() {
			keys := newKeyer(&cfg)
			value := make([]byte, cfg.ValueSize)
			for j := range value {
				value[j] = 'a' + byte(j%26)
			}
			for ctx.Err() == nil {
				k := next.Add(1) - 1
				if k >= int64(cfg.Keyspace) {
					return
				}
				key := keys.key(int(k))
				if err := preloadPut(ctx, cfg, t, key, value); err != nil {
					cancel(fmt.Errorf("preload: put %q: %w", key, err))
					return
				}
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return err
	}
	return nil
}

// preloadPut puts key, trying again after transient failures.
func preloadPut(ctx context.Context, cfg Config, t Target, key, value []byte) error {
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		rctx, rcancel := ctx, context.CancelFunc(func() {})
		if cfg.RequestTimeout > 0 {
			rctx, rcancel = context.WithTimeout(ctx, cfg.RequestTimeout)
		}
		err := t.Put(rctx, key, value)
		rcancel()
		if err == nil || ctx.Err() != nil || attempt == preloadAttempts || !transientCodes[cfg.ErrorCode(err)] {
			if err != nil && attempt > 1 {
				err = fmt.Errorf("after %d tries: %w", attempt, err)
			}
			return err
		}
		timer := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			timer.Stop()
			return err
		case <-timer.C:
		}
		backoff = min(2*backoff, time.Second)
	}
}
