package membership

import (
	"context"
	"log"
	"log/slog"
	"strings"
	"sync"
	"time"
)

// memberlistLogWriter routes memberlist's standard-library logger into slog.
// memberlist writes one line per Printf, prefixed with "[ERR]", "[WARN]",
// "[INFO]" or "[DEBUG]"; we map those to slog levels and drop DEBUG, which
// is per-packet noise. Its errors (bad keys, name conflicts, failed pushes)
// are the operator's main clue when gossip misbehaves, so they must not be
// lost in stderr.
type memberlistLogWriter struct {
	logger *slog.Logger
	// onLine, if set, sees every non-debug message (prefix stripped)
	// first; when it returns true the message is not logged, because the
	// Gossip reports it better itself. The Gossip also uses it to notice
	// suspicion (see noteMemberlistLine).
	onLine func(msg string) (handled bool)
}

// newMemberlistLogger returns a *log.Logger for memberlist.Config.Logger.
func newMemberlistLogger(logger *slog.Logger, onLine func(string) bool) *log.Logger {
	return log.New(&memberlistLogWriter{logger: logger, onLine: onLine}, "", 0)
}

func (w *memberlistLogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := slog.LevelInfo
	for _, pl := range []struct {
		prefix string
		level  slog.Level
	}{
		{"[ERR]", slog.LevelError},
		{"[ERROR]", slog.LevelError},
		{"[WARN]", slog.LevelWarn},
		{"[INFO]", slog.LevelInfo},
		{"[DEBUG]", slog.LevelDebug},
		{"[TRACE]", slog.LevelDebug},
	} {
		if rest, ok := strings.CutPrefix(line, pl.prefix); ok {
			level, line = pl.level, strings.TrimSpace(rest)
			break
		}
	}
	if level <= slog.LevelDebug {
		return len(p), nil
	}
	msg := strings.TrimPrefix(line, "memberlist: ")
	if w.onLine != nil && w.onLine(msg) {
		return len(p), nil
	}
	w.logger.Log(context.Background(), level, "memberlist: "+msg)
	return len(p), nil
}

// logLimiter lets a message through once per interval per key, so a
// condition that repeats every gossip round (a name conflict, an unreachable
// seed) is reported without flooding the log.
type logLimiter struct {
	every time.Duration
	mu    sync.Mutex
	last  map[string]time.Time
}

func newLogLimiter(every time.Duration) *logLimiter {
	return &logLimiter{every: every, last: make(map[string]time.Time)}
}

// allow reports whether key may be logged now, and records it if so.
func (l *logLimiter) allow(key string) bool {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, ok := l.last[key]; ok && now.Sub(t) < l.every {
		return false
	}
	// Forget stale keys so the map cannot grow without bound.
	for k, t := range l.last {
		if now.Sub(t) >= l.every {
			delete(l.last, k)
		}
	}
	l.last[key] = now
	return true
}
