package bench

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// WriteReport writes r as text: counts, throughput, errors, latency
// quantiles and a histogram.
func WriteReport(w io.Writer, r *Result) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Workload:    %s, %d clients", r.Workload, r.Clients)
	if r.Rate > 0 {
		fmt.Fprintf(&b, ", open loop at %g/s", r.Rate)
	} else {
		b.WriteString(", closed loop")
	}
	if r.Interrupted {
		b.WriteString(" (interrupted)")
	}
	b.WriteByte('\n')
	fmt.Fprintf(&b, "Duration:    %.3fs\n", r.DurationS)
	fmt.Fprintf(&b, "Requests:    %d ok, %d failed\n", r.Ops, r.ErrorCount())
	fmt.Fprintf(&b, "Throughput:  %.1f ops/s\n", r.OpsPerS)
	if len(r.Errors) > 0 {
		b.WriteString("Errors:\n")
		for _, c := range slices.Sorted(maps.Keys(r.Errors)) {
			fmt.Fprintf(&b, "  %-20s %d\n", c, r.Errors[c])
		}
	}
	if r.Misses > 0 {
		fmt.Fprintf(&b, "Misses:      %d reads found no key (write the keys first with --preload)\n", r.Misses)
	}
	if r.CASFailed > 0 {
		fmt.Fprintf(&b, "CAS failed:  %d compares did not hold (the key changed in between)\n", r.CASFailed)
	}
	if r.Dropped > 0 {
		fmt.Fprintf(&b, "Dropped:     %d requests due were never sent: every client was busy, the rate was not reached\n", r.Dropped)
	}
	if h := r.Hist; h != nil && h.Count() > 0 {
		b.WriteString("Latency:\n")
		for _, q := range []struct {
			name string
			d    time.Duration
		}{
			{"min", h.Min()}, {"mean", h.Mean()}, {"p50", h.Quantile(0.5)}, {"p90", h.Quantile(0.9)},
			{"p99", h.Quantile(0.99)}, {"p99.9", h.Quantile(0.999)}, {"max", h.Max()},
		} {
			fmt.Fprintf(&b, "  %-6s %10.3f ms\n", q.name, float64(q.d)/1e6)
		}
		b.WriteString("Histogram:\n")
		if err := h.WriteText(&b, 40); err != nil {
			return err
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
