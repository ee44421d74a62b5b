package ctl

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/kvstore/kvstore/storage/snapfile"
)

func (a *app) snapshotCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Save a backup of the key-value state, or check one",
		Long: `A snapshot is a file holding the whole key-value state of the cluster at one
revision: every key with its history down to the compacted revision, and the
leases, with a SHA-256 checksum of the whole file. "kvd restore" starts a new
cluster from it.`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "save FILE",
		Short: "Save a snapshot of the cluster's key-value state to FILE",
		Long: `Save streams a consistent copy of the key-value state from the first endpoint
that answers, at a revision at least as recent as every write acknowledged
before it started, into a temporary file beside FILE; once the copy has
arrived whole (its SHA-256 matches what the node sent), the file is synced
and renamed to FILE, replacing any file there. A failed save leaves FILE as it
was. Only an explicit --timeout bounds it.`,
		Example: `  kvctl snapshot save backup.snap
  kvctl --endpoints 10.0.0.1:7379 snapshot save /backups/kv-$(date +%F).snap -o json`,
		Args: cobra.ExactArgs(1),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			return a.snapshotSave(cmd, args[0])
		}),
	})
	cmd.AddCommand(&cobra.Command{
		Use:   "status FILE",
		Short: "Check a snapshot file and print what it holds",
		Long: `Status reads FILE whole, checks its checksum, and prints its revision, the
compacted revision, the number of keys, its size and its SHA-256. A truncated
or damaged file fails (exit 1).`,
		Example: `  kvctl snapshot status backup.snap
  kvctl snapshot status backup.snap -o json`,
		Args: cobra.ExactArgs(1),
		RunE: a.runE(func(cmd *cobra.Command, args []string) error {
			c, err := snapfile.Verify(args[0])
			if err != nil {
				return fmt.Errorf("snapshot status: %w", err)
			}
			return a.printSnapshot(c)
		}),
	})
	return cmd
}

func (a *app) snapshotSave(cmd *cobra.Command, path string) error {
	c, _, cancel, err := a.newClient(cmd.Context())
	if err != nil {
		return err
	}
	defer c.Close()
	cancel()
	ctx, cancel := a.longContext(cmd)
	defer cancel()
	_, err = snapfile.Save(path, func(w io.Writer) (snapfile.Info, error) {
		snap, err := c.Snapshot(ctx, w)
		if err != nil {
			return snapfile.Info{}, err
		}
		if snap.Format != snapfile.Format {
			return snapfile.Info{}, fmt.Errorf("the node sent a snapshot in format %d; this kvctl writes format %d", snap.Format, snapfile.Format)
		}
		return snapfile.Info{
			Revision:          snap.Header.GetRevision(),
			CompactedRevision: snap.Trailer.GetCompactedRevision(),
			Keys:              snap.Trailer.GetKeys(),
			Entries:           snap.Trailer.GetEntries(),
			ClusterID:         snap.Header.GetClusterId(),
			Member:            snap.Header.GetNodeId(),
			CreatedAt:         time.Now().UTC().Truncate(time.Second),
		}, nil
	})
	if err != nil {
		return fmt.Errorf("snapshot save: %w", err)
	}
	// Read back what reached the disk: the answer is about the file.
	checked, err := snapfile.Verify(path)
	if err != nil {
		return fmt.Errorf("snapshot save: %w", err)
	}
	if a.json() {
		return a.printSnapshot(checked)
	}
	return a.printf("saved %s: revision %d, %d keys, %d bytes, SHA-256 %s\n", path, checked.Revision, checked.Keys, checked.Size, checked.SHA256)
}

// snapshotJSON is the -o json form of a snapshot file.
type snapshotJSON struct {
	snapfile.Info
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

func (a *app) printSnapshot(c *snapfile.Checked) error {
	if a.json() {
		b, err := json.Marshal(snapshotJSON{Info: c.Info, Size: c.Size, SHA256: c.SHA256})
		if err != nil {
			return fmt.Errorf("encode output: %w", err)
		}
		return a.write(append(b, '\n'))
	}
	return a.table([]string{"REVISION", "COMPACTED", "KEYS", "SIZE", "SHA-256", "CLUSTER", "MEMBER", "CREATED"}, [][]string{{
		strconv.FormatInt(c.Revision, 10), strconv.FormatInt(c.CompactedRevision, 10), strconv.FormatInt(c.Keys, 10),
		strconv.FormatInt(c.Size, 10), c.SHA256, c.ClusterID, c.Member, c.CreatedAt.Format(time.RFC3339),
	}})
}
