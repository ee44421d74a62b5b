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
	// packets limits memberlist's warnings and errors by kind: many are
	// about one inbound packet (they end in "from=ADDR").
	packets *senderLines
	// onLine, if set, sees every non-debug message (prefix stripped)
	// first; when it returns true the message is not logged, because the
	// Gossip reports it better itself. The Gossip also uses it to notice
	// suspicion (see noteMemberlistLine).
	onLine func(msg string) (handled bool)
}

// newMemberlistLogger returns a *log.Logger for memberlist.Config.Logger.
func newMemberlistLogger(logger *slog.Logger, onLine func(string) bool) *log.Logger {
	return log.New(&memberlistLogWriter{logger: logger, onLine: onLine, packets: newSenderLines(senderLineEvery)}, "", 0)
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
	if level == slog.LevelError && isProbeMiss(msg) {
		level = slog.LevelWarn
	}
	if w.onLine != nil && w.onLine(msg) {
		return len(p), nil
	}
	if level >= slog.LevelWarn && w.packets != nil {
		text, from, fromSender := strings.Cut(msg, " from=")
		suppressed, log := w.packets.allow(text)
		if !log {
			return len(p), nil
		}
		var attrs []any
		if fromSender {
			attrs = append(attrs, "from", from)
		}
		if suppressed > 0 {
			attrs = append(attrs, "suppressed", suppressed, "hint", "lines of this kind were dropped since the last one: a peer with the wrong gossip key or version, or a stranger sending the gossip port garbage")
		}
		w.logger.Log(context.Background(), level, "memberlist: "+text, attrs...)
		return len(p), nil
	}
	w.logger.Log(context.Background(), level, "memberlist: "+msg)
	return len(p), nil
}

// isProbeMiss reports whether a memberlist error line is a probe of one
// peer that failed or was not answered in time. That is what its failure
// detector is for (the peer is suspected, then declared dead or refuted),
// not an error of this node: a warning, as a slow peer is.
func isProbeMiss(msg string) bool {
	for _, p := range []string{"Failed fallback TCP ping", "Failed to send UDP ping", "Failed to send indirect UDP ping", "Push/Pull with "} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// senderLineEvery is how often a warning or error of one kind is logged at
// most.
const senderLineEvery = 10 * time.Second

// senderLines lets a warning or error through once per interval per
// kind, counting those it held back. Many are about one inbound packet,
// and anyone who reaches the UDP port can send garbage, from any source
// address: the kind is the line's constant start (up to the first digit,
// quote, parenthesis or colon, where memberlist's format puts what varies:
// numbers, addresses, what the sender chose), never the sender, so a
// flood from many addresses costs as few lines as one from one address.
type senderLines struct {
	every time.Duration
	mu    sync.Mutex
	kinds map[string]*senderLine
}

type senderLine struct {
	last       time.Time
	suppressed int
}

func newSenderLines(every time.Duration) *senderLines {
	return &senderLines{every: every, kinds: make(map[string]*senderLine)}
}

// maxSenderKinds bounds the kinds remembered: lines can carry what the
// sender chose (a node name).
const maxSenderKinds = 256

// allow reports whether a line may be logged now, and how many of its
// kind were held back since the last one logged.
func (l *senderLines) allow(line string) (suppressed int, ok bool) {
	kind := line
	if i := strings.IndexAny(kind, "0123456789\"'(:%"); i >= 0 {
		kind = kind[:i]
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	k, seen := l.kinds[kind]
	if !seen {
		if len(l.kinds) >= maxSenderKinds {
			clear(l.kinds)
		}
		k = &senderLine{}
		l.kinds[kind] = k
	} else if now.Sub(k.last) < l.every {
		k.suppressed++
		return 0, false
	}
	suppressed, k.suppressed, k.last = k.suppressed, 0, now
	return suppressed, true
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
