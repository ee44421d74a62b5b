package consensus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// hclogAdapter routes hashicorp/raft's hclog output into slog, so that a node
// has one log stream with one format and one level setting.
type hclogAdapter struct {
	l        *slog.Logger
	name     string
	implied  []any
	minLevel hclog.Level
}

// NewHCLogger returns an hclog.Logger that writes to l. Messages below
// minLevel are dropped before any formatting.
func NewHCLogger(l *slog.Logger, name string, minLevel hclog.Level) hclog.Logger {
	return &hclogAdapter{l: l.With("component", name), name: name, minLevel: minLevel}
}

func slogLevel(level hclog.Level) slog.Level {
	switch level {
	case hclog.Trace, hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

func (h *hclogAdapter) enabled(level hclog.Level) bool {
	return level >= h.minLevel && h.l.Enabled(context.Background(), slogLevel(level))
}

func (h *hclogAdapter) Log(level hclog.Level, msg string, args ...any) {
	switch {
	case level > hclog.Debug && anyOtherCluster(args):
		// Raft says so on every retry; the node reported it once.
		level = hclog.Debug
	case level > hclog.Debug && anyError(args, raft.ErrTransportShutdown):
		// This node's own transport stopping: a stop, not a fault.
		level = hclog.Debug
	case level > hclog.Warn && msg == "failed to make requestVote RPC":
		// A peer that is down or stopping; the election goes on without
		// it, and its absence is reported as "failed to contact".
		level = hclog.Warn
	}
	if !h.enabled(level) {
		return
	}
	for i, a := range args {
		// raft formats some values lazily with hclog.Fmt.
		if f, ok := a.(hclog.Format); ok && len(f) > 0 {
			if format, ok := f[0].(string); ok {
				args[i] = fmt.Sprintf(format, f[1:]...)
			}
		}
	}
	h.l.Log(context.Background(), slogLevel(level), msg, args...)
}

// anyError reports whether one of args is an error that is target.
func anyError(args []any, target error) bool {
	for _, a := range args {
		if err, ok := a.(error); ok && errors.Is(err, target) {
			return true
		}
	}
	return false
}

// anyOtherCluster reports whether one of args is an error saying that a
// peer belongs to another cluster: it implements OtherCluster() bool, as
// the node's dialer's refusals do.
func anyOtherCluster(args []any) bool {
	for _, a := range args {
		var oc interface{ OtherCluster() bool }
		if err, ok := a.(error); ok && errors.As(err, &oc) && oc.OtherCluster() {
			return true
		}
	}
	return false
}

func (h *hclogAdapter) Trace(msg string, args ...any) { h.Log(hclog.Trace, msg, args...) }
func (h *hclogAdapter) Debug(msg string, args ...any) { h.Log(hclog.Debug, msg, args...) }
func (h *hclogAdapter) Info(msg string, args ...any)  { h.Log(hclog.Info, msg, args...) }
func (h *hclogAdapter) Warn(msg string, args ...any)  { h.Log(hclog.Warn, msg, args...) }
func (h *hclogAdapter) Error(msg string, args ...any) { h.Log(hclog.Error, msg, args...) }
func (h *hclogAdapter) IsTrace() bool                 { return h.enabled(hclog.Trace) }
func (h *hclogAdapter) IsDebug() bool                 { return h.enabled(hclog.Debug) }
func (h *hclogAdapter) IsInfo() bool                  { return h.enabled(hclog.Info) }
func (h *hclogAdapter) IsWarn() bool                  { return h.enabled(hclog.Warn) }
func (h *hclogAdapter) IsError() bool                 { return h.enabled(hclog.Error) }
func (h *hclogAdapter) ImpliedArgs() []any            { return h.implied }
func (h *hclogAdapter) Name() string                  { return h.name }
func (h *hclogAdapter) SetLevel(level hclog.Level)    { h.minLevel = level }
func (h *hclogAdapter) GetLevel() hclog.Level         { return h.minLevel }

func (h *hclogAdapter) With(args ...any) hclog.Logger {
	c := *h
	c.l = h.l.With(args...)
	c.implied = append(append([]any(nil), h.implied...), args...)
	return &c
}

func (h *hclogAdapter) Named(name string) hclog.Logger {
	if h.name != "" {
		name = h.name + "." + name
	}
	return h.ResetNamed(name)
}

func (h *hclogAdapter) ResetNamed(name string) hclog.Logger {
	c := *h
	c.name = name
	c.l = h.l.With("subsystem", name)
	return &c
}

func (h *hclogAdapter) StandardLogger(*hclog.StandardLoggerOptions) *log.Logger {
	return slog.NewLogLogger(h.l.Handler(), slogLevel(h.minLevel))
}

func (h *hclogAdapter) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	return h.StandardLogger(opts).Writer()
}
