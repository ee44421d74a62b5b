package chaos

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
)

// TestComposeFile loads docker-compose.yml with compose-go, the loader of
// Compose v2 (docker compose), which validates it against the Compose
// Specification's schema, and checks what the README promises of it.
// (deploy/compose-check.sh runs it with Debian's docker-compose 1.29.)
func TestComposeFile(t *testing.T) {
	opts, err := cli.NewProjectOptions([]string{"../../docker-compose.yml"}, cli.WithName("kvstore"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("Compose v2's loader refuses docker-compose.yml: %v", err)
	}
	if len(p.Services) != 1 {
		t.Fatalf("want one service, have %d", len(p.Services))
	}
	s, err := p.GetService("kvd")
	if err != nil {
		t.Fatal(err)
	}
	if s.Scale == nil || *s.Scale != 3 {
		t.Errorf("scale %v, want 3", s.Scale)
	}
	if want := []string{"--join", "kvd", "--bootstrap-expect", "3"}; !slices.Equal(s.Command, want) {
		t.Errorf("command %v, want %v", s.Command, want)
	}
	// One volume per replica: anonymous (no source), at /data.
	if len(s.Volumes) != 1 || s.Volumes[0].Source != "" || s.Volumes[0].Target != "/data" {
		t.Errorf("volumes %+v, want one anonymous volume at /data", s.Volumes)
	}
	if s.StopGracePeriod == nil || time.Duration(*s.StopGracePeriod) < 40*time.Second {
		t.Errorf("stop_grace_period %v: a clean leave needs up to about 35 s", s.StopGracePeriod)
	}
}
