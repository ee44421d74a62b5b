package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// Preload writes every key of cfg's keyspace once, with a value of cfg's
// value size, from concurrency loops spread over targets, so that reads
// find keys. Nothing is measured. It stops at the first failed put and
// returns its error.
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
			key := make([]byte, cfg.KeySize)
			value := make([]byte, cfg.ValueSize)
			for j := range value {
				value[j] = 'a' + byte(j%26)
			}
			for ctx.Err() == nil {
				k := next.Add(1) - 1
				if k >= int64(cfg.Keyspace) {
					return
				}
				Key(key, int(k))
				rctx, rcancel := ctx, context.CancelFunc(func() {})
				if cfg.RequestTimeout > 0 {
					rctx, rcancel = context.WithTimeout(ctx, cfg.RequestTimeout)
				}
				err := t.Put(rctx, key, value)
				rcancel()
				if err != nil {
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
