package route

import (
	"bytes"
	"strconv"

	"github.com/kvstore/kvstore/storage"
)

// Span is the key range [Start, End) a request touches. End nil is +inf;
// a non-nil End at or before Start is empty. The spans of Spans alias the
// request's bytes: do not modify them.
type Span struct{ Start, End []byte }

// Empty reports whether the span holds no key.
func (s Span) Empty() bool { return s.End != nil && bytes.Compare(s.Start, s.End) >= 0 }

// single reports whether the span is the one key Start.
func (s Span) single() bool {
	return len(s.End) == len(s.Start)+1 && s.End[len(s.Start)] == 0 && bytes.HasPrefix(s.End, s.Start)
}

// String prints a single key as the key, any other span as [start, end),
// keys quoted and cut short as the API's errors print them.
func (s Span) String() string {
	if s.single() {
		return quote(s.Start)
	}
	end := "+inf"
	if s.End != nil {
		end = quote(s.End)
	}
	return "[" + quote(s.Start) + ", " + end + ")"
}

// Key is the span of the one key k: [k, k+"\x00").
func Key(k []byte) Span {
	// A fresh end: appending to k could write into the request's buffer.
	end := make([]byte, len(k)+1)
	copy(end, k)
	return Span{Start: k, End: end}
}

// KeyRange is the span of key and range_end as etcd and kvstore.v1 read
// them: an empty range_end is the single key, "\x00" every key from key
// on, anything else [key, range_end) (empty when not after key).
func KeyRange(key, rangeEnd []byte) Span {
	switch {
	case len(rangeEnd) == 0:
		return Key(key)
	case len(rangeEnd) == 1 && rangeEnd[0] == 0:
		return Span{Start: key}
	}
	return Span{Start: key, End: rangeEnd}
}

// Prefix is the span of every key starting with p: +inf ends it when no
// key is past all of them (p empty or all 0xff).
func Prefix(p []byte) Span {
	// storage.PrefixEnd says "\x00", our range_end form of +inf, for those.
	return KeyRange(p, storage.PrefixEnd(p))
}

// quote prints a key safely and briefly, as api's quote does: Go-quoted,
// cut to its first 64 bytes.
func quote(b []byte) string {
	const max = 64
	if len(b) > max {
		return strconv.Quote(string(b[:max])) + "..."
	}
	return strconv.Quote(string(b))
}

// collector collects the spans of a request, dropping empty ones.
type collector []Span

func (c *collector) add(s Span) {
	if !s.Empty() {
		*c = append(*c, s)
	}
}
