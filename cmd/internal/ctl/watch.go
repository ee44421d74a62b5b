package ctl

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kvstore/kvstore/api/client"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// longContext returns the context of a command that runs until stopped
// (watch, lease keepalive, lock): the default --timeout would cut it after
// 5s, so only a --timeout given on the command line bounds it.
func (a *app) longContext(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	ctx := cmd.Context()
	if f := cmd.Flag("timeout"); f != nil && f.Changed && a.timeout > 0 {
		return context.WithTimeout(ctx, a.timeout)
	}
	return context.WithCancel(ctx)
}

// stopped reports whether err only says that ctx ended: Ctrl-C, SIGTERM
// or an explicit --timeout, the normal ends of a long-running command.
func stopped(ctx context.Context, err error) bool {
	return ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded))
}

func (a *app) watchCommand() *cobra.Command {
	var (
		prefix, fromKey, prevKV, noPut, noDelete bool
		rangeEnd                                 string
		rev                                      int64
		progress                                 time.Duration
	)
	cmd := &cobra.Command{
		Use:   "watch KEY",
		Short: "Print changes to a key, a range or a prefix as they happen",
		Long: `Watch prints every change to KEY, to every key starting with KEY (--prefix),
to the keys in [KEY, E) (--range-end E) or to every key from KEY on
(--from-key), as it happens, one line per change:

  REVISION PUT KEY VALUE
  REVISION DELETE KEY

With --prev-kv, the value before the change follows as "(prev VALUE)" when
the key existed. With --progress, a line "REVISION PROGRESS" comes whenever
that long passed without a change: everything up to REVISION was printed.
Keys and values are printed raw; use -o json for an exact account (one
WatchResponse per line, the first one with "created" and the revision the
watch starts after).

The watch starts after the current revision, or replays history from
revision N with --rev N (an error names the oldest revision left when N was
compacted away). When the node it talks to dies or the connection drops,
it resumes on the next endpoint after the last revision it printed: no
change is lost or printed twice. It says so on standard error and goes on.

It runs until Ctrl-C (or SIGTERM), exiting with 0; --timeout, when given,
stops it after that long, also with 0.`,
		Example: `  kvctl watch --prefix config/
  kvctl watch greeting --rev 120 --prev-kv
  kvctl watch --prefix svc/ --progress 10s -o json`,
		Args: cobra.ExactArgs(1),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			req := &kvstorev1.WatchRequest{
				Key: []byte(args[0]), Prefix: prefix, StartRevision: rev,
				PrevKv: prevKV, NoPut: noPut, NoDelete: noDelete,
			}
			switch {
			case fromKey:
				req.RangeEnd = []byte{0}
			case rangeEnd != "":
				req.RangeEnd = []byte(rangeEnd)
			}
			if rev < 0 {
				return usagef("invalid --rev %d: must not be negative", rev)
			}
			if progress < 0 {
				return usagef("invalid --progress %v: must not be negative", progress)
			}
			if progress > 0 {
				req.ProgressInterval = durationpb.New(progress)
			}
			c, _, cancel, err := a.newClient(cmd.Context())
			if err != nil {
				return err
			}
			cancel()
			defer c.Close()
			ctx, cancel := a.longContext(cmd)
			defer cancel()

			w := c.Watch(ctx, req, client.WithResumeHook(func(err error, from int64) {
				fmt.Fprintf(a.stderr, "kvctl: watch: %v; resuming from revision %d\n", err, from)
			}))
			defer w.Close()
			for w.Receive() {
				if err := a.printWatch(w.Msg()); err != nil {
					return err
				}
			}
			if err := w.Err(); err != nil && !stopped(ctx, err) {
				var ce *client.CompactedError
				if errors.As(err, &ce) {
					return fmt.Errorf("watch: revision %d was compacted: the oldest revision left is %d", ce.StartRevision, ce.CompactRevision)
				}
				return err // the client's error already says "watch:"
			}
			return nil
		}),
	}
	f := cmd.Flags()
	f.BoolVar(&prefix, "prefix", false, "watch every key starting with KEY")
	f.StringVar(&rangeEnd, "range-end", "", "watch the keys in [KEY, `E`)")
	f.BoolVar(&fromKey, "from-key", false, "watch every key from KEY on")
	f.Int64Var(&rev, "rev", 0, "replay history from revision `N` first (0: start now)")
	f.BoolVar(&prevKV, "prev-kv", false, "print the value before each change")
	f.BoolVar(&noPut, "no-put", false, "leave puts out")
	f.BoolVar(&noDelete, "no-delete", false, "leave deletes out")
	f.DurationVar(&progress, "progress", 0, "print the current revision after this long without a change (at least 100ms)")
	cmd.MarkFlagsMutuallyExclusive("prefix", "range-end", "from-key")
	return cmd
}

// printWatch prints one watch response: as JSON, or one line per event.
func (a *app) printWatch(m *kvstorev1.WatchResponse) error {
	if a.json() {
		return a.printJSON(m)
	}
	if m.GetCreated() {
		return nil
	}
	if len(m.GetEvents()) == 0 {
		return a.printf("%d PROGRESS\n", m.GetHeader().GetRevision())
	}
	for _, ev := range m.GetEvents() {
		kv := ev.GetKv()
		rev := []byte(strconv.FormatInt(kv.GetModRevision(), 10))
		var line []byte
		switch ev.GetType() {
		case kvstorev1.EventType_EVENT_TYPE_PUT:
			line = slices.Concat(rev, []byte(" PUT "), kv.GetKey(), []byte(" "), kv.GetValue())
		case kvstorev1.EventType_EVENT_TYPE_DELETE:
			line = slices.Concat(rev, []byte(" DELETE "), kv.GetKey())
		default:
			line = slices.Concat(rev, []byte(" "+ev.GetType().String()+" "), kv.GetKey())
		}
		if p := ev.GetPrevKv(); p != nil {
			line = slices.Concat(line, []byte(" (prev "), p.GetValue(), []byte(")"))
		}
		if err := a.write(append(line, '\n')); err != nil {
			return err
		}
	}
	return nil
}
