package ctl

import (
	"fmt"
	"strings"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"github.com/kvstore/kvstore/membership"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

func (a *app) gossipKeyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "gossip-key",
		Short: "List or rotate the gossip encryption keys of every live member",
		Long: `Gossip-key acts on the gossip keyring of every live member, through the node
asked: gossip packets travel over UDP, outside TLS, encrypted with the
keyring's primary key and read with any of its keys. Keys are given as
base64 of 16, 24 or 32 bytes (openssl rand -base64 32) and shown as
fingerprints, never in full.

Rotate a live cluster's key in three steps, each on every node before the
next: install the new key, use it, remove the old one. Each node keeps its
keyring in its data dir (gossip-keyring), which wins over --gossip-key when
it restarts. A node that was down during a rotation comes back with the
old keyring and cannot gossip with the others: delete that file and start
it with --gossip-key set to the new key.

Exit 1 when any member could not act; the others did.`,
		Example: `  kvctl gossip-key list
  kvctl gossip-key install "$(openssl rand -base64 32)"
  kvctl gossip-key use NEWKEY
  kvctl gossip-key remove OLDKEY`,
	}
	action := func(name, short string, act kvstorev1.GossipKeyAction) *cobra.Command {
		c := &cobra.Command{Use: name + " KEY", Short: short, Args: cobra.ExactArgs(1)}
		if act == kvstorev1.GossipKeyAction_GOSSIP_KEY_ACTION_LIST {
			c.Use, c.Args = name, cobra.NoArgs
		}
		c.RunE = a.runE(func(cmd *cobra.Command, args []string) error {
			var key []byte
			if len(args) == 1 {
				k, err := membership.ParseKey(args[0])
				if err != nil {
					return usagef("%v", err)
				}
				key = k
			}
			c, ctx, cancel, err := a.newClient(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			defer cancel()
			resp, err := c.Cluster.GossipKeys(ctx, connect.NewRequest(&kvstorev1.GossipKeysRequest{Action: act, Key: key}))
			if err != nil {
				return fmt.Errorf("gossip-key %s: %w", name, err)
			}
			if a.json() {
				err = a.printJSON(resp.Msg)
			} else {
				var rows [][]string
				for _, m := range resp.Msg.GetMembers() {
					rows = append(rows, []string{m.GetNodeId(), orDash(m.GetPrimary()), orDash(strings.Join(m.GetKeys(), ",")), orDash(m.GetError())})
				}
				err = a.table([]string{"NODE", "PRIMARY", "KEYS", "ERROR"}, rows)
			}
			if err != nil {
				return err
			}
			var failed []string
			for _, m := range resp.Msg.GetMembers() {
				if m.GetError() != "" {
					failed = append(failed, m.GetNodeId())
				}
			}
			if len(failed) > 0 {
				return fmt.Errorf("gossip-key %s: not done on %s", name, strings.Join(failed, ", "))
			}
			return nil
		})
		return c
	}
	cmd.AddCommand(
		action("list", "List every live member's keyring (fingerprints)", kvstorev1.GossipKeyAction_GOSSIP_KEY_ACTION_LIST),
		action("install", "Add a key every member then reads gossip with", kvstorev1.GossipKeyAction_GOSSIP_KEY_ACTION_INSTALL),
		action("use", "Make an installed key the one every member encrypts with", kvstorev1.GossipKeyAction_GOSSIP_KEY_ACTION_USE),
		action("remove", "Remove a key (not the primary one) from every member", kvstorev1.GossipKeyAction_GOSSIP_KEY_ACTION_REMOVE),
	)
	return cmd
}
