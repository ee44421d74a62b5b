package monitoring

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/chromedp/chromedp"

	"github.com/kvstore/kvstore/node/nodetest"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// findChromium returns the path of a Chromium or Chrome, or skips the test.
func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no chromium on PATH (Debian: apt-get install chromium); the status page test needs a real browser")
	return ""
}

// screenshotDir is where the test writes its screenshots:
// $KVSTORE_SCREENSHOT_DIR, else the test's temporary directory (the path
// is logged).
func screenshotDir(t *testing.T) string {
	if d := os.Getenv("KVSTORE_SCREENSHOT_DIR"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	return t.TempDir()
}

// TestStatusPageInChromium loads a 3-node cluster's status page in headless
// Chromium: it shows the three members with their numbers, a screenshot is
// written, and after a node is killed the page (reloading itself) shows it
// unreachable and no longer alive.
func TestStatusPageInChromium(t *testing.T) {
	chromium := findChromium(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := nodetest.NewCluster(t, 3)
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Some traffic, so the page has rates to show.
	cl := c.Client()
	load, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	go func() {
		for i := 0; load.Err() == nil; i++ {
			_, _ = cl.KV.Put(load, connect.NewRequest(&kvstorev1.PutRequest{Key: fmt.Appendf(nil, "k%03d", i%200), Value: []byte("value")}))
			time.Sleep(5 * time.Millisecond)
		}
	}()
	// Watch from the first leader; kill another node later. Leadership
	// may move meanwhile on a loaded machine: the page must show whoever
	// leads.
	var victim *nodetest.Node
	for _, nd := range c.Nodes() {
		if nd.Node() != leader.Node() {
			victim = nd
		}
	}
	names := `[` + strings.Join(func() (q []string) {
		for _, nd := range c.Nodes() {
			q = append(q, jsString(nd.Name()))
		}
		return q
	}(), ",") + `]`

	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1500, 500))...)
	defer cancelAlloc()
	browser, cancelBrowser := chromedp.NewContext(alloc, chromedp.WithLogf(t.Logf))
	defer cancelBrowser()
	url := "http://" + leader.Addr() + "/ui/?refresh=1"
	if err := chromedp.Do(browser, chromedp.Navigate(url)); err != nil {
		t.Fatalf("load %s in chromium: %v", url, err)
	}

	// waitPage polls the page (which reloads itself every second) until
	// cond, a JavaScript expression, is true.
	waitPage := func(what, cond string) {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		for {
			ok, err := chromedp.Run(browser, chromedp.Evaluate[bool](cond))
			if err == nil && ok {
				return
			}
			if time.Now().After(deadline) {
				body, _ := chromedp.Run(browser, chromedp.Evaluate[string]("document.body ? document.body.innerText : ''"))
				t.Fatalf("the page never showed %s (last error %v); it shows:\n%s", what, err, body)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	waitPage("three reachable alive members, one leader, and rates",
		`document.querySelectorAll('tr.member[data-reachable="true"][data-gossip="alive"]').length === 3 &&
		 `+names+`.includes(document.getElementById('leader').textContent) &&
		 document.querySelectorAll('tr.member .badge.leader').length === 1 &&
		 [...document.querySelectorAll('tr.member')].every(r => r.cells[12] && /^[0-9.]+$/.test(r.cells[12].textContent))`)
	text, err := chromedp.Run(browser, chromedp.Evaluate[string]("document.getElementById('members').innerText"))
	if err != nil {
		t.Fatal(err)
	}
	for _, nd := range c.Nodes() {
		if !strings.Contains(text, nd.Name()) || !strings.Contains(text, nd.Addr()) {
			t.Errorf("the members table lacks %s at %s:\n%s", nd.Name(), nd.Addr(), text)
		}
	}
	if !strings.Contains(text, "voter") || !strings.Contains(text, "leader") {
		t.Errorf("the members table shows no voter or no leader:\n%s", text)
	}
	dir := screenshotDir(t)
	shoot := func(name string) {
		t.Helper()
		png, err := chromedp.Run(browser, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s", p)
	}
	shoot("status-page.png")

	victim.Kill()
	waitPage(victim.Name()+" unreachable and not alive",
		`(() => { const r = document.querySelector('tr.member[data-id=`+jsString(victim.Name())+`]');
		  return r !== null && r.dataset.reachable === "false" && r.dataset.gossip !== "alive"; })()`)
	shoot("status-page-killed.png")
}

// jsString quotes s for JavaScript (node names are plain).
func jsString(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}
