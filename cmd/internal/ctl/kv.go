package ctl

import (
	"fmt"
	"slices"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

func (a *app) putCommand() *cobra.Command {
	var (
		prevKV bool
		lease  string
	)
	cmd := &cobra.Command{
		Use:   "put KEY [VALUE]",
		Short: "Set a key to a value",
		Long: `Put sets KEY to VALUE, creating KEY if it does not exist, and prints OK.

When VALUE is omitted or is "-", the value is read from standard input,
byte for byte: a trailing newline is part of the value (use printf or
echo -n to leave it out). To store the one-byte value "-", pipe it in.

With --prev-kv, the pair as it was before the put follows OK (key, then
value, one per line), when the key existed.

With --lease ID (in hex, as kvctl lease grant prints it), the key is
attached to that lease and deleted when it expires or is revoked; a put
without --lease detaches it.`,
		Example: `  kvctl put greeting hello
  kvctl put config/app.yaml < app.yaml
  printf 'a value with\na newline' | kvctl put doc -
  kvctl put greeting bye --prev-kv
  kvctl put --lease 694d7c5f1b0bbd0a svc/a up`,
		Args: cobra.RangeArgs(1, 2),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			var leaseID int64
			if lease != "" {
				id, err := parseLeaseID(lease)
				if err != nil {
					return err
				}
				leaseID = id
			}
			value, err := a.readValue(args, 1)
			if err != nil {
				return err
			}
			c, ctx, cancel, err := a.newClient(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			defer cancel()
			resp, err := c.KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{
				Key: []byte(args[0]), Value: value, PrevKv: prevKV, Lease: leaseID,
			}))
			if connect.CodeOf(err) == connect.CodeNotFound && leaseID != 0 {
				return notFound("put", "lease %s not found (expired or revoked)", formatLeaseID(leaseID))
			}
			if err != nil {
				return fmt.Errorf("put: %w", err)
			}
			if a.json() {
				return a.printJSON(resp.Msg)
			}
			if err := a.printf("OK\n"); err != nil {
				return err
			}
			if kv := resp.Msg.GetPrevKv(); kv != nil {
				return a.printKV(kv, false)
			}
			return nil
		}),
	}
	cmd.Flags().BoolVar(&prevKV, "prev-kv", false, "print the previous pair")
	cmd.Flags().StringVar(&lease, "lease", "", "attach the key to lease `ID` (hex)")
	return cmd
}

func (a *app) getCommand() *cobra.Command {
	var (
		rev         int64
		consistency string
	)
	cmd := &cobra.Command{
		Use:   "get KEY",
		Short: "Print the value of a key",
		Long: `Get prints the value of KEY, raw, followed by a newline. With -o json it
prints the whole answer, with the key's revisions and version.

A missing key is an error: kvctl prints 'get: not_found: key "KEY" not
found' on standard error and exits with 1.`,
		Example: `  kvctl get greeting
  kvctl get greeting --rev 42
  kvctl get greeting --consistency s -o json`,
		Args: cobra.ExactArgs(1),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			cons, err := parseConsistency(consistency)
			if err != nil {
				return err
			}
			c, ctx, cancel, err := a.newClient(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			defer cancel()
			resp, err := c.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{
				Key: []byte(args[0]), Revision: rev, Consistency: cons,
			}))
			if connect.CodeOf(err) == connect.CodeNotFound {
				return notFound("get", "key %q not found", args[0])
			}
			if err != nil {
				return fmt.Errorf("get: %w", err)
			}
			if a.json() {
				return a.printJSON(resp.Msg)
			}
			return a.write(slices.Concat(resp.Msg.GetKv().GetValue(), newline))
		}),
	}
	cmd.Flags().Int64Var(&rev, "rev", 0, "read the key as of revision `N` (0: the latest)")
	cmd.Flags().StringVar(&consistency, "consistency", "l", "read `mode`: l (linearizable) or s (serializable: the serving node's local state, maybe stale)")
	return cmd
}

func (a *app) delCommand() *cobra.Command {
	var (
		prefix, fromKey, prevKV bool
		rangeEnd                string
	)
	cmd := &cobra.Command{
		Use:     "del KEY",
		Aliases: []string{"delete"},
		Short:   "Delete a key, a range or a prefix",
		Long: `Del deletes KEY, every key starting with KEY (--prefix), the keys in
[KEY, E) (--range-end E) or every key from KEY on (--from-key), and prints
the number of keys deleted.

With --prev-kv, the deleted pairs follow the number (key, then value, one
per line).`,
		Example: `  kvctl del greeting
  kvctl del users/ --prefix
  kvctl del log/2024-01 --range-end log/2024-02 --prev-kv`,
		Args: cobra.ExactArgs(1),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			req := &kvstorev1.DeleteRequest{Key: []byte(args[0]), Prefix: prefix, PrevKv: prevKV}
			switch {
			case fromKey:
				req.RangeEnd = []byte{0}
			case rangeEnd != "":
				req.RangeEnd = []byte(rangeEnd)
			}
			c, ctx, cancel, err := a.newClient(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			defer cancel()
			resp, err := c.KV.Delete(ctx, connect.NewRequest(req))
			if err != nil {
				return fmt.Errorf("del: %w", err)
			}
			if a.json() {
				return a.printJSON(resp.Msg)
			}
			if err := a.printf("%d\n", resp.Msg.GetDeleted()); err != nil {
				return err
			}
			return a.printKVs(resp.Msg.GetPrevKvs(), false)
		}),
	}
	f := cmd.Flags()
	f.BoolVar(&prefix, "prefix", false, "delete every key starting with KEY")
	f.StringVar(&rangeEnd, "range-end", "", "delete the keys in [KEY, `E`)")
	f.BoolVar(&fromKey, "from-key", false, "delete every key from KEY on")
	f.BoolVar(&prevKV, "prev-kv", false, "print the deleted pairs")
	cmd.MarkFlagsMutuallyExclusive("prefix", "range-end", "from-key")
	return cmd
}

func (a *app) rangeCommand() *cobra.Command {
	var (
		prefix, fromKey, keysOnly, countOnly bool
		limit, rev                           int64
		consistency                          string
	)
	cmd := &cobra.Command{
		Use:     "range [KEY [RANGE_END]]",
		Aliases: []string{"ls"},
		Short:   "List keys and values",
		Long: `Range lists the pairs of a range, in key order:

  kvctl range                     every key
  kvctl range KEY                 KEY alone
  kvctl range KEY RANGE_END       the keys in [KEY, RANGE_END)
  kvctl range KEY --prefix        every key starting with KEY
  kvctl range KEY --from-key      every key from KEY on

It prints each pair as the key, then the value, one per line; only the keys
with --keys-only; only the number of pairs with --count-only.

kvctl reads a large range in pages, every page at the revision of the first,
so the listing is one consistent snapshot. --limit N stops after N pairs.
With -o json it prints one RangeResponse holding every pair read; "more" and
"nextKey" tell where a listing cut by --limit would go on.`,
		Example: `  kvctl ls
  kvctl range users/ --prefix --keys-only
  kvctl range a b --limit 10 -o json
  kvctl range users/ --prefix --count-only --consistency s`,
		Args: cobra.MaximumNArgs(2),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			cons, err := parseConsistency(consistency)
			if err != nil {
				return err
			}
			if limit < 0 {
				return usagef("invalid --limit %d: must not be negative", limit)
			}
			req := &kvstorev1.RangeRequest{
				Prefix: prefix, Limit: limit, Revision: rev, Consistency: cons,
				KeysOnly: keysOnly, CountOnly: countOnly,
			}
			switch len(args) {
			case 0:
				if !fromKey {
					req.Prefix = true // an empty prefix: every key
				}
			case 2:
				if prefix || fromKey {
					return usagef("RANGE_END cannot go with --prefix or --from-key")
				}
				req.RangeEnd = []byte(args[1])
			}
			if len(args) > 0 {
				req.Key = []byte(args[0])
			}
			if fromKey {
				req.RangeEnd = []byte{0}
			}
			c, ctx, cancel, err := a.newClient(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			defer cancel()
			resp, err := c.RangeAll(ctx, req)
			if err != nil {
				return fmt.Errorf("range: %w", err)
			}
			switch {
			case a.json():
				return a.printJSON(resp)
			case countOnly:
				return a.printf("%d\n", resp.GetCount())
			default:
				return a.printKVs(resp.GetKvs(), keysOnly)
			}
		}),
	}
	f := cmd.Flags()
	f.BoolVar(&prefix, "prefix", false, "list every key starting with KEY")
	f.BoolVar(&fromKey, "from-key", false, "list every key from KEY on")
	f.Int64Var(&limit, "limit", 0, "stop after `N` pairs (0: no limit)")
	f.BoolVar(&keysOnly, "keys-only", false, "print only the keys")
	f.BoolVar(&countOnly, "count-only", false, "print only the number of pairs")
	f.Int64Var(&rev, "rev", 0, "read as of revision `N` (0: the latest)")
	f.StringVar(&consistency, "consistency", "l", "read `mode`: l (linearizable) or s (serializable: the serving node's local state, maybe stale)")
	cmd.MarkFlagsMutuallyExclusive("prefix", "from-key")
	cmd.MarkFlagsMutuallyExclusive("keys-only", "count-only")
	return cmd
}

var newline = []byte{'\n'}

// parseConsistency maps --consistency to the proto enum.
func parseConsistency(s string) (kvstorev1.Consistency, error) {
	switch s {
	case "l", "linearizable":
		return kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE, nil
	case "s", "serializable":
		return kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE, nil
	}
	return 0, usagef("invalid --consistency %q: want l (linearizable) or s (serializable)", s)
}

// printKV prints a pair as the key and the value on lines of their own, or
// the key alone.
func (a *app) printKV(kv *kvstorev1.KeyValue, keyOnly bool) error {
	// A new slice: appending to the key could write into the value, as
	// both may share the buffer the response was decoded from.
	if keyOnly {
		return a.write(slices.Concat(kv.GetKey(), newline))
	}
	return a.write(slices.Concat(kv.GetKey(), newline, kv.GetValue(), newline))
}

// printKVs prints pairs as printKV does.
func (a *app) printKVs(kvs []*kvstorev1.KeyValue, keysOnly bool) error {
	for _, kv := range kvs {
		if err := a.printKV(kv, keysOnly); err != nil {
			return err
		}
	}
	return nil
}
