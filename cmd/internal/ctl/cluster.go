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
term and indexes, the leader it knows of, the store revision, the kvd
version, the free space of its data directory and the id of its cluster (made
when the cluster was created; nodes of different clusters never talk to each
other), and, while it waits for --bootstrap-expect servers, how many it sees.
When alarms are raised in the cluster they follow in a second table, and when
the node refuses writes a last line says why. The first endpoint that answers
is the one shown; pass a single --endpoints to pick a node.`,
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
			err = a.table(
				[]string{"NODE", "ADDRESS", "STATE", "LEADER", "LEADER ADDRESS", "TERM", "COMMIT", "APPLIED", "REVISION", "VERSION", "DISK FREE", "CLUSTER"},
				[][]string{{
					s.GetNodeId(), s.GetAddress(), s.GetRaftState(), s.GetLeaderId(), s.GetLeaderAddress(),
					fmt.Sprint(s.GetTerm()), fmt.Sprint(s.GetCommitIndex()), fmt.Sprint(s.GetAppliedIndex()),
					fmt.Sprint(s.GetRevision()), s.GetVersion(), diskFree(s), s.GetClusterId(),
				}},
			)
			if err != nil {
				return err
			}
			if w := s.GetBootstrapWaiting(); w != "" {
				if err := a.printf("not ready: %s\n", w); err != nil {
					return err
				}
			}
			if len(s.GetAlarms()) > 0 {
				if err := a.printf("\n"); err != nil {
					return err
				}
				if err := a.alarmTable(s.GetAlarms()); err != nil {
					return err
				}
			}
			if why := s.GetWritesRefused(); why != "" {
				return a.printf("\nwrites refused: %s\n", why)
			}
			return nil
		}),
	}
}

// diskFree shows a node's free space in MiB; "" from a node that does
// not measure it.
func diskFree(s *kvstorev1.StatusResponse) string {
	if s.GetDiskMarginBytes() == 0 {
		return ""
	}
	return fmt.Sprintf("%d MiB", s.GetDiskFreeBytes()>>20)
}

func (a *app) alarmCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "alarm",
		Short: "List or clear the cluster's alarms",
		Long: `Alarms are trouble on one member that the whole cluster acts on, as etcd's:
NOSPACE (the member's data directory is short of space: every node refuses
puts, transactions that put and lease grants; reads, deletes and compaction
go on) and CORRUPT (the leader's consistency check found the member's state
disagreeing with the majority's: every node refuses writes, and that member
refuses reads).`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List the raised alarms",
		Long:  `List prints each raised alarm: its type, the member it names and why it was raised.`,
		Example: `  kvctl alarm list
  kvctl alarm list -o json`,
		Args: cobra.NoArgs,
		RunE: a.runE(func(cmd *cobra.Command, _ []string) error {
			return a.alarm(cmd, &kvstorev1.AlarmRequest{Action: kvstorev1.AlarmAction_ALARM_ACTION_LIST}, "alarm list")
		}),
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "disarm",
		Short: "Clear every raised alarm",
		Long: `Disarm clears every alarm and prints those left. A member whose disk is still
short of space raises its NOSPACE alarm again within a second, and the next
consistency check raises a CORRUPT alarm again if the states still differ:
free space, or rebuild the member, first.`,
		Example: `  kvctl alarm disarm`,
		Args:    cobra.NoArgs,
		RunE: a.runE(func(cmd *cobra.Command, _ []string) error {
			return a.alarm(cmd, &kvstorev1.AlarmRequest{Action: kvstorev1.AlarmAction_ALARM_ACTION_DEACTIVATE}, "alarm disarm")
		}),
	})
	return cmd
}

func (a *app) alarm(cmd *cobra.Command, req *kvstorev1.AlarmRequest, what string) error {
	c, ctx, cancel, err := a.newClient(cmd.Context())
	if err != nil {
		return err
	}
	defer c.Close()
	defer cancel()
	resp, err := c.Cluster.Alarm(ctx, connect.NewRequest(req))
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if a.json() {
		return a.printJSON(resp.Msg)
	}
	if len(resp.Msg.GetAlarms()) == 0 {
		return a.printf("no alarms\n")
	}
	return a.alarmTable(resp.Msg.GetAlarms())
}

// alarmTable prints alarms, one a row.
func (a *app) alarmTable(alarms []*kvstorev1.AlarmMember) error {
	var rows [][]string
	for _, m := range alarms {
		rows = append(rows, []string{strings.TrimPrefix(m.GetAlarm().String(), "ALARM_TYPE_"), m.GetMemberId(), m.GetReason()})
	}
	return a.table([]string{"ALARM", "MEMBER", "REASON"}, rows)
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
