package ctl

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

func (a *app) statusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the state of the serving node",
		Long: `Status shows the node that answered: its id and address, its raft state,
term and indexes, the leader it knows of, the store revision and the kvd
version. The first endpoint that answers is the one shown; pass a single
--endpoints to pick a node.`,
		Example: `  kvctl status
  kvctl status --endpoints 10.0.0.2:7379 -o json`,
		Args: cobra.NoArgs,
		RunE: a.runE(func(cmd *cobra.Command, _ []string) error {
			c, ctx, cancel, err := a.newClient(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			defer cancel()
			resp, err := c.Cluster.Status(ctx, connect.NewRequest(&kvstorev1.StatusRequest{}))
			if err != nil {
				return fmt.Errorf("status: %w", err)
			}
			if a.json() {
				return a.printJSON(resp.Msg)
			}
			s := resp.Msg
			return a.table(
				[]string{"NODE", "ADDRESS", "STATE", "LEADER", "LEADER ADDRESS", "TERM", "COMMIT", "APPLIED", "REVISION", "VERSION"},
				[][]string{{
					s.GetNodeId(), s.GetAddress(), s.GetRaftState(), s.GetLeaderId(), s.GetLeaderAddress(),
					fmt.Sprint(s.GetTerm()), fmt.Sprint(s.GetCommitIndex()), fmt.Sprint(s.GetAppliedIndex()),
					fmt.Sprint(s.GetRevision()), s.GetVersion(),
				}},
			)
		}),
	}
}

func (a *app) membersCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "members",
		Short: "List the nodes of the cluster",
		Long: `Members lists the nodes of the cluster with their raft suffrage (voter or
nonvoter), whether each is the leader, and its gossip state (alive,
suspect, dead or left; "-" when gossip does not know the node).`,
		Example: `  kvctl members
  kvctl members -o json`,
		Args: cobra.NoArgs,
		RunE: a.runE(func(cmd *cobra.Command, _ []string) error {
			c, ctx, cancel, err := a.newClient(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			defer cancel()
			resp, err := c.Cluster.Members(ctx, connect.NewRequest(&kvstorev1.MembersRequest{}))
			if err != nil {
				return fmt.Errorf("members: %w", err)
			}
			if a.json() {
				return a.printJSON(resp.Msg)
			}
			var rows [][]string
			for _, m := range resp.Msg.GetMembers() {
				leader := "no"
				if m.GetLeader() {
					leader = "yes"
				}
				rows = append(rows, []string{
					m.GetId(), m.GetAddress(), suffrage(m.GetSuffrage()), leader, orDash(m.GetGossipState()),
				})
			}
			return a.table([]string{"ID", "ADDRESS", "SUFFRAGE", "LEADER", "GOSSIP"}, rows)
		}),
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "remove ID",
		Short: "Remove a dead member from the cluster",
		Long: `Remove takes a node out of the raft configuration by hand, for a node that
died and will not come back (the leader also does this by itself after
kvd's --dead-after). A voter is not removed if the voters left alive would
lack a quorum.`,
		Example: `  kvctl members remove n3`,
		Args:    cobra.ExactArgs(1),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.newClient(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			defer cancel()
			resp, err := c.Cluster.RemoveMember(ctx, connect.NewRequest(&kvstorev1.RemoveMemberRequest{Id: args[0]}))
			if err != nil {
				return fmt.Errorf("members remove: %w", err)
			}
			if a.json() {
				return a.printJSON(resp.Msg)
			}
			return a.printf("removed %s\n", args[0])
		}),
	})
	return cmd
}

func (a *app) leaderCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "leader",
		Short: "Manage raft leadership",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "transfer [ID]",
		Short: "Move leadership to another voter",
		Long: `Transfer asks the leader to hand leadership to the voter named, or, with no
ID, to the most up-to-date voter. It prints the new leader.`,
		Example: `  kvctl leader transfer
  kvctl leader transfer n2`,
		Args: cobra.MaximumNArgs(1),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			c, ctx, cancel, err := a.newClient(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			defer cancel()
			req := &kvstorev1.TransferLeadershipRequest{}
			if len(args) == 1 {
				req.Id = args[0]
			}
			resp, err := c.Cluster.TransferLeadership(ctx, connect.NewRequest(req))
			if err != nil {
				return fmt.Errorf("leader transfer: %w", err)
			}
			if a.json() {
				return a.printJSON(resp.Msg)
			}
			return a.printf("%s\n", resp.Msg.GetLeaderId())
		}),
	})
	return cmd
}

// suffrage names a Suffrage the way operators say it: voter, nonvoter.
func suffrage(s kvstorev1.Suffrage) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "SUFFRAGE_"))
}

// orDash keeps empty cells visible in a table.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// table prints a header and rows in aligned columns. Empty cells show as "-"
// so that every row has the same number of columns for awk and cut.
func (a *app) table(header []string, rows [][]string) error {
	w := tabwriter.NewWriter(a.stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(w, strings.Join(header, "\t"))
	for _, row := range rows {
		cells := make([]string, len(row))
		for i, c := range row {
			cells[i] = orDash(c)
		}
		fmt.Fprintln(w, strings.Join(cells, "\t"))
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}
