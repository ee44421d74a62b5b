package ctl

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
)

func (a *app) groupCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "group",
		Short: "Manage the raft groups that serve key ranges",
		Long: `A cluster starts with one raft group, the meta group, holding every key.
A data group is a raft group of its own, on nodes of its own, that serves a
key range: writes to different groups are ordered and replicated apart, so
they add up. Any node takes any request and routes it by key; a request whose
keys lie in two groups is refused (FAILED_PRECONDITION), never served in part.`,
		Args: cobra.NoArgs,
	}
	var (
		rangeStart string
		prefix     string
		replicas   string
		count      uint32
	)
	create := &cobra.Command{
		Use:   "create NAME (--prefix PREFIX | --range START END)",
		Short: "Give a key range to a new raft group",
		Long: `Create gives the key range [START, END), or every key under PREFIX, to a new
raft group hosted by the nodes named with --replicas, or by the live nodes
with the fewest groups (--replica-count of them, 3 by default). Keys the range
holds already move to the group with their revisions; writes to the range
wait while they are copied. It returns once the group serves the range.`,
		Example: `  kvctl group create events --prefix /registry/events/
  kvctl group create events --range /registry/events/ /registry/events0 --replicas n4,n5,n6`,
		Args: cobra.RangeArgs(1, 2),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			req := &kvstorev1.CreateGroupRequest{Name: args[0], ReplicaCount: count}
			switch {
			case prefix != "" && cmd.Flags().Changed("range"):
				return usagef("--prefix and --range do not go together")
			case prefix != "":
				if len(args) > 1 {
					return usagef("a range end with --prefix")
				}
				req.Start, req.End = []byte(prefix), storage.PrefixEnd([]byte(prefix))
				if len(req.End) == 1 && req.End[0] == 0 {
					req.End = nil
				}
			case cmd.Flags().Changed("range"):
				if len(args) < 2 {
					return usagef("--range takes START and END: kvctl group create NAME --range START END")
				}
				req.Start, req.End = []byte(rangeStart), []byte(args[1])
			default:
				return usagef("say which keys: --prefix PREFIX or --range START END")
			}
			if replicas != "" {
				req.Replicas = strings.Split(replicas, ",")
			}
			c, ctx, cancel, err := a.newClient(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			defer cancel()
			resp, err := c.Cluster.CreateGroup(ctx, connect.NewRequest(req))
			if err != nil {
				return fmt.Errorf("group create: %w", err)
			}
			if a.json() {
				return a.printJSON(resp.Msg)
			}
			g := resp.Msg.GetGroup()
			return a.printf("created group %d (%s) over %s on %s\n", g.GetId(), g.GetName(), showRanges(g.GetRanges()), strings.Join(g.GetVoters(), ","))
		}),
	}
	create.Flags().StringVar(&prefix, "prefix", "", "give every key under this prefix to the group")
	create.Flags().StringVar(&rangeStart, "range", "", "give the keys from this one to END (the next argument) to the group")
	create.Flags().StringVar(&replicas, "replicas", "", "the node ids that host the group, comma-separated")
	create.Flags().Uint32Var(&count, "replica-count", 0, "how many replicas to place when --replicas is not given (0: 3)")
	list := &cobra.Command{
		Use:   "list",
		Short: "List the raft groups and the key ranges they serve",
		Long: `List prints every group with its ranges, its voters and, where the serving
node hosts a replica of it, its leader, revision and number of keys ("-" for a
group the serving node does not host).`,
		Example: `  kvctl group list
  kvctl group list -o json`,
		Args: cobra.NoArgs,
		RunE: a.runE(func(cmd *cobra.Command, _ []string) error {
			c, ctx, cancel, err := a.newClient(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			defer cancel()
			resp, err := c.Cluster.ListGroups(ctx, connect.NewRequest(&kvstorev1.ListGroupsRequest{}))
			if err != nil {
				return fmt.Errorf("group list: %w", err)
			}
			if a.json() {
				return a.printJSON(resp.Msg)
			}
			var rows [][]string
			for _, g := range resp.Msg.GetGroups() {
				voters := strings.Join(g.GetVoters(), ",")
				if g.GetId() == 0 {
					voters = "(the cluster's voters)"
				}
				if nv := g.GetNonVoters(); len(nv) > 0 {
					voters += "+" + strings.Join(nv, ",")
				}
				if t := strings.Join(g.GetTarget(), ","); t != "" && t != strings.Join(g.GetVoters(), ",") {
					voters += "->" + t
				}
				rev, keys, size := "", "", ""
				if g.GetLeader() != "" || g.GetRevision() != 0 {
					rev, keys = strconv.FormatInt(g.GetRevision(), 10), strconv.FormatInt(g.GetKeys(), 10)
				}
				if g.GetSizeBytes() > 0 {
					size = fmt.Sprintf("%d MiB", (g.GetSizeBytes()+1<<20-1)>>20)
				}
				rows = append(rows, []string{strconv.FormatUint(g.GetId(), 10), g.GetName(), showRanges(g.GetRanges()), voters, g.GetLeader(), rev, keys, size})
			}
			return a.table([]string{"ID", "NAME", "RANGES", "REPLICAS", "LEADER", "REVISION", "KEYS", "SIZE"}, rows)
		}),
	}
	var to string
	move := &cobra.Command{
		Use:   "move NAME --to NODES",
		Short: "Move a raft group's replicas to other nodes",
		Long: `Move moves a data group's replicas to the nodes named, online: the group's
leader adds each new node as a non-voter, promotes it, then removes each old
one, one raft configuration change at a time. It returns once the group's
voters are the nodes named (the --timeout defaults to 60s here); a move cut
short by the timeout goes on, and kvctl group list shows it.`,
		Example: `  kvctl group move events --to n4,n5,n6`,
		Args:    cobra.ExactArgs(1),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			if to == "" {
				return usagef("say where to: --to n4,n5,n6")
			}
			if !cmd.Flags().Changed("timeout") {
				a.timeout = moveTimeout
			}
			c, ctx, cancel, err := a.newClient(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			defer cancel()
			resp, err := c.Cluster.MoveGroup(ctx, connect.NewRequest(&kvstorev1.MoveGroupRequest{Name: args[0], Replicas: strings.Split(to, ",")}))
			if err != nil {
				return fmt.Errorf("group move: %w", err)
			}
			if a.json() {
				return a.printJSON(resp.Msg)
			}
			g := resp.Msg.GetGroup()
			return a.printf("moved group %d (%s) to %s\n", g.GetId(), g.GetName(), strings.Join(g.GetVoters(), ","))
		}),
	}
	move.Flags().StringVar(&to, "to", "", "the node ids to move the group to, comma-separated")
	cmd.AddCommand(create, list, move)
	return cmd
}

// moveTimeout is group move's --timeout unless given: a move copies the
// group's state to each new node.
const moveTimeout = 60 * time.Second

// showRanges prints key ranges as [start, end), "+inf" for no end.
func showRanges(spans []*kvstorev1.KeySpan) string {
	var out []string
	for _, s := range spans {
		end := "+inf"
		if len(s.GetEnd()) > 0 {
			end = strconv.Quote(string(s.GetEnd()))
		}
		out = append(out, fmt.Sprintf("[%s, %s)", strconv.Quote(string(s.GetStart())), end))
	}
	if len(out) == 0 {
		return "(none)"
	}
	return strings.Join(out, " ")
}
