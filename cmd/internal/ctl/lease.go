package ctl

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/kvstore/kvstore/api/client"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// parseLeaseID reads a lease id in hex, as kvctl prints them ("0x" allowed).
func parseLeaseID(s string) (int64, error) {
	h := strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X")
	id, err := strconv.ParseInt(h, 16, 64)
	if err != nil || id == 0 {
		return 0, usagef("invalid lease id %q: want the id in hex, as lease grant prints it", s)
	}
	return id, nil
}

// formatLeaseID prints a lease id in hex, as etcd does.
func formatLeaseID(id int64) string { return strconv.FormatInt(id, 16) }

// parseTTL reads a TTL as a Go duration ("10s", "1m30s") or a number of
// seconds, and rounds it up to whole seconds.
func parseTTL(s string) (int64, error) {
	var d time.Duration
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		d = time.Duration(n) * time.Second
	} else if d, err = time.ParseDuration(s); err != nil {
		return 0, usagef("invalid TTL %q: want a duration like 10s or 1m", s)
	}
	if d <= 0 {
		return 0, usagef("invalid TTL %q: must be positive", s)
	}
	return client.TTLSeconds(d), nil
}

// leaseNotFound turns the NotFound of a lease call into a plain message.
func leaseNotFound(op string, id int64, err error) error {
	if connect.CodeOf(err) == connect.CodeNotFound {
		return notFound(op, "lease %s not found (expired or revoked)", formatLeaseID(id))
	}
	return fmt.Errorf("%s: %w", op, err)
}

func (a *app) leaseCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lease",
		Short: "Grant, renew, inspect and revoke leases",
		Long: `A lease is a time to live that keys can be attached to (kvctl put --lease
ID): when it expires or is revoked, all its keys are deleted in one
revision. Keep-alives renew it. Lease ids are printed and read in hex.`,
		Example: `  ID=$(kvctl lease grant 10s)
  kvctl put --lease $ID svc/a up
  kvctl lease keepalive $ID
  kvctl lease ttl $ID --keys`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(a.leaseGrantCommand(), a.leaseRevokeCommand(), a.leaseKeepAliveCommand(),
		a.leaseTTLCommand(), a.leaseListCommand())
	return cmd
}

func (a *app) leaseGrantCommand() *cobra.Command {
	var id string
	cmd := &cobra.Command{
		Use:   "grant TTL",
		Short: "Create a lease and print its id",
		Long: `Grant creates a lease with a time to live of TTL (a duration like 10s or
1m, or a number of seconds; rounded up to whole seconds, at least 2s) and
prints its id in hex. The keys attached to it are deleted TTL after the
last keep-alive.`,
		Example: `  kvctl lease grant 10s
  kvctl lease grant 60 --id 1234abcd`,
		Args: cobra.ExactArgs(1),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			ttl, err := parseTTL(args[0])
			if err != nil {
				return err
			}
			req := &kvstorev1.GrantRequest{TtlSeconds: ttl}
			if id != "" {
				if req.Id, err = parseLeaseID(id); err != nil {
					return err
				}
			}
			c, ctx, cancel, err := a.newClient(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			defer cancel()
			resp, err := c.Lease.Grant(ctx, connect.NewRequest(req))
			if err != nil {
				return fmt.Errorf("lease grant: %w", err)
			}
			if a.json() {
				return a.printJSON(resp.Msg)
			}
			return a.printf("%s\n", formatLeaseID(resp.Msg.GetId()))
		}),
	}
	cmd.Flags().StringVar(&id, "id", "", "ask for this lease `ID` (hex) instead of one the server picks")
	return cmd
}

func (a *app) leaseRevokeCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID",
		Short: "Delete a lease and its keys",
		Long:  `Revoke deletes the lease ID and, in one revision, every key attached to it, and prints OK.`,
		Args:  cobra.ExactArgs(1),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			id, err := parseLeaseID(args[0])
			if err != nil {
				return err
			}
			c, ctx, cancel, err := a.newClient(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			defer cancel()
			resp, err := c.Lease.Revoke(ctx, connect.NewRequest(&kvstorev1.RevokeRequest{Id: id}))
			if err != nil {
				return leaseNotFound("lease revoke", id, err)
			}
			if a.json() {
				return a.printJSON(resp.Msg)
			}
			return a.printf("OK\n")
		}),
	}
}

func (a *app) leaseKeepAliveCommand() *cobra.Command {
	var once bool
	cmd := &cobra.Command{
		Use:   "keepalive ID",
		Short: "Keep a lease alive until stopped",
		Long: `Keepalive renews the lease ID a third of its TTL after each renewal, and
prints a line for each renewal, until Ctrl-C (or SIGTERM; exit 0) or until
the lease is lost (exit 1): the cluster says it expired or was revoked, or
no renewal got through within its TTL. With --once it renews it once.`,
		Example: `  kvctl lease keepalive 694d7c5f1b0bbd0a
  kvctl lease keepalive 694d7c5f1b0bbd0a --once -o json`,
		Args: cobra.ExactArgs(1),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			id, err := parseLeaseID(args[0])
			if err != nil {
				return err
			}
			print := func(r *kvstorev1.KeepAliveOnceResponse) error {
				if a.json() {
					return a.printJSON(r)
				}
				return a.printf("lease %s kept alive, TTL %ds\n", formatLeaseID(r.GetId()), r.GetTtlSeconds())
			}
			if once {
				c, ctx, cancel, err := a.newClient(cmd.Context())
				if err != nil {
					return err
				}
				defer c.Close()
				defer cancel()
				resp, err := c.Lease.KeepAliveOnce(ctx, connect.NewRequest(&kvstorev1.KeepAliveOnceRequest{Id: id}))
				if err != nil {
					return leaseNotFound("lease keepalive", id, err)
				}
				return print(resp.Msg)
			}
			c, _, cancel, err := a.newClient(cmd.Context())
			if err != nil {
				return err
			}
			cancel()
			defer c.Close()
			ctx, cancel := a.longContext(cmd)
			defer cancel()
			var printErr error
			err = c.KeepAlive(ctx, id, func(r *kvstorev1.KeepAliveOnceResponse) {
				if printErr == nil {
					if printErr = print(r); printErr != nil {
						cancel()
					}
				}
			})
			switch {
			case printErr != nil:
				return printErr
			case stopped(ctx, err):
				return nil
			case connect.CodeOf(err) == connect.CodeNotFound:
				return notFound("lease keepalive", "lease %s lost: expired or revoked", formatLeaseID(id))
			default:
				return fmt.Errorf("lease keepalive: %w", err)
			}
		}),
	}
	cmd.Flags().BoolVar(&once, "once", false, "renew once and exit")
	return cmd
}

func (a *app) leaseTTLCommand() *cobra.Command {
	var keys bool
	cmd := &cobra.Command{
		Use:   "ttl ID",
		Short: "Show how long a lease has left",
		Long: `Ttl prints the time the lease ID has left and the TTL it was granted, as
"lease ID: 7s left of 10s"; with --keys, the keys attached to it follow,
one per line.`,
		Example: `  kvctl lease ttl 694d7c5f1b0bbd0a --keys`,
		Args:    cobra.ExactArgs(1),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			id, err := parseLeaseID(args[0])
			if err != nil {
				return err
			}
			c, ctx, cancel, err := a.newClient(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			defer cancel()
			resp, err := c.Lease.TimeToLive(ctx, connect.NewRequest(&kvstorev1.TimeToLiveRequest{Id: id, Keys: keys}))
			if err != nil {
				return leaseNotFound("lease ttl", id, err)
			}
			if a.json() {
				return a.printJSON(resp.Msg)
			}
			m := resp.Msg
			if err := a.printf("lease %s: %ds left of %ds\n", formatLeaseID(m.GetId()), m.GetTtlSeconds(), m.GetGrantedTtlSeconds()); err != nil {
				return err
			}
			for _, k := range m.GetKeys() {
				if err := a.write(slices.Concat(k, newline)); err != nil {
					return err
				}
			}
			return nil
		}),
	}
	cmd.Flags().BoolVar(&keys, "keys", false, "list the keys attached to the lease")
	return cmd
}

func (a *app) leaseListCommand() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the leases",
		Long:    `List prints every lease: its id in hex and the TTL it was granted.`,
		Args:    cobra.NoArgs,
		RunE: a.runE(func(cmd *cobra.Command, _ []string) error {
			c, ctx, cancel, err := a.newClient(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			defer cancel()
			resp, err := c.Lease.Leases(ctx, connect.NewRequest(&kvstorev1.LeasesRequest{}))
			if err != nil {
				return fmt.Errorf("lease list: %w", err)
			}
			if a.json() {
				return a.printJSON(resp.Msg)
			}
			leases := slices.Clone(resp.Msg.GetLeases())
			slices.SortFunc(leases, func(x, y *kvstorev1.LeaseStatus) int {
				return cmp.Compare(x.GetId(), y.GetId())
			})
			rows := make([][]string, 0, len(leases))
			for _, l := range leases {
				rows = append(rows, []string{formatLeaseID(l.GetId()), fmt.Sprintf("%ds", l.GetGrantedTtlSeconds())})
			}
			return a.table([]string{"ID", "TTL"}, rows)
		}),
	}
}

// compactCommand is here rather than in kv.go because, like leases, it came
// with the watch API.
func (a *app) compactCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "compact REVISION",
		Short: "Drop the history before a revision",
		Long: `Compact drops the history older than REVISION and prints OK: reads at
revisions below it, and watches from them, fail from then on; reads at
REVISION and later work. REVISION must not be past the current revision.`,
		Example: `  kvctl compact 1200`,
		Args:    cobra.ExactArgs(1),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			rev, err := strconv.ParseInt(args[0], 10, 64)
			if err != nil || rev <= 0 {
				return usagef("invalid revision %q: want a positive number", args[0])
			}
			c, ctx, cancel, err := a.newClient(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			defer cancel()
			resp, err := c.KV.Compact(ctx, connect.NewRequest(&kvstorev1.CompactRequest{Revision: rev}))
			if err != nil {
				return fmt.Errorf("compact: %w", err)
			}
			if a.json() {
				return a.printJSON(resp.Msg)
			}
			return a.printf("OK\n")
		}),
	}
}
