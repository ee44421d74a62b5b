package diskspace

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// statfs reads the filesystem holding dir.
func statfs(dir string) (FS, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return FS{}, &fs.PathError{Op: "statfs", Path: dir, Err: err}
	}
	return FS{Total: st.Blocks * uint64(st.Bsize), Avail: st.Bavail * uint64(st.Bsize)}, nil
}

// allocated is how many bytes of blocks the file has.
func allocated(info fs.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return info.Size()
}

// Reserve allocates f's blocks up to size without changing its size or
// contents (blocks past its end stay reserved for later writes).
func Reserve(f *os.File, size int64) error {
	for {
		err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 0, size)
		if err != unix.EINTR {
			if err != nil {
				return &fs.PathError{Op: "fallocate", Path: f.Name(), Err: err}
			}
			return nil
		}
	}
}

// notifier calls back for files created in the directories it watches
// (inotify: only creations and renames into them, so the writes of the
// raft log's journal cost nothing here).
type notifier struct {
	fd       int
	f        *os.File // fd, read through Go's poller so that Close wakes the read
	onCreate func(path string)
	mu       sync.Mutex
	dirs     map[int]string // watch descriptor -> directory
	done     chan struct{}
}

func newNotifier(onCreate func(path string)) (*notifier, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, &os.SyscallError{Syscall: "inotify_init1", Err: err}
	}
	n := &notifier{
		fd:       fd,
		f:        os.NewFile(uintptr(fd), "inotify"),
		onCreate: onCreate,
		dirs:     make(map[int]string),
		done:     make(chan struct{}),
	}
	go n.run()
	return n, nil
}

func (n *notifier) add(dir string) error {
	wd, err := unix.InotifyAddWatch(n.fd, dir, unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_ONLYDIR)
	if err != nil {
		return &fs.PathError{Op: "inotify_add_watch", Path: dir, Err: err}
	}
	n.mu.Lock()
	n.dirs[wd] = dir
	n.mu.Unlock()
	return nil
}

// run reads events until close.
func (n *notifier) run() {
	defer close(n.done)
	buf := make([]byte, 64<<10)
	for {
		k, err := n.f.Read(buf)
		if err != nil || k <= 0 {
			return
		}
		for off := 0; off+unix.SizeofInotifyEvent <= k; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameLen := int(ev.Len)
			raw := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+nameLen]
			off += unix.SizeofInotifyEvent + nameLen
			if ev.Mask&(unix.IN_ISDIR|unix.IN_IGNORED) != 0 {
				continue
			}
			name := string(bytes.TrimRight(raw, "\x00"))
			n.mu.Lock()
			dir, ok := n.dirs[int(ev.Wd)]
			n.mu.Unlock()
			if ok && name != "" {
				n.onCreate(filepath.Join(dir, name))
			}
		}
	}
}

// close stops the notifier and waits for its goroutine.
func (n *notifier) close() {
	n.f.Close()
	<-n.done
}
