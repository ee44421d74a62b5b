package consensus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

type levels struct {
	mu  sync.Mutex
	got map[string]slog.Level
}

func (l *levels) Enabled(context.Context, slog.Level) bool { return true }
func (l *levels) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.got[r.Message] = r.Level
	l.mu.Unlock()
	return nil
}
func (l *levels) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *levels) WithGroup(string) slog.Handler      { return l }

type otherCluster struct{}

func (otherCluster) Error() string      { return "node n1 belongs to cluster x" }
func (otherCluster) OtherCluster() bool { return true }

// TestHCLogQuietsOtherCluster: raft's lines about a peer of another cluster
// (an error that says so, wrapped or not) go to debug, where the repeats of
// an error the node reported once belong, as do those of this node's own
// transport stopping; a vote request to a peer that is down is a warning;
// other errors keep their level.
func TestHCLogQuietsOtherCluster(t *testing.T) {
	h := &levels{got: map[string]slog.Level{}}
	l := NewHCLogger(slog.New(h), "raft", hclog.Debug)
	l.Error("failed to appendEntries to", "peer", "n1", "error", fmt.Errorf("raft dial: %w", otherCluster{}))
	l.Warn("failed to heartbeat", "error", otherCluster{})
	l.Error("failed to make requestVote RPC", "error", errors.New("EOF"))
	l.Error("failed to decode incoming command", "error", raft.ErrTransportShutdown)
	l.Error("failed to get log", "error", errors.New("disk"))
	for msg, want := range map[string]slog.Level{
		"failed to appendEntries to":        slog.LevelDebug,
		"failed to heartbeat":               slog.LevelDebug,
		"failed to make requestVote RPC":    slog.LevelWarn,
		"failed to decode incoming command": slog.LevelDebug,
		"failed to get log":                 slog.LevelError,
	} {
		if got, ok := h.got[msg]; !ok || got != want {
			t.Errorf("%q logged at %v (%v), want %v", msg, got, ok, want)
		}
	}
}
