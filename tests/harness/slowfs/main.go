// slowfs: a passthrough FUSE file system over a backing directory in which every operation that
// changes data or metadata takes a fixed delay before it is done, as on a disk whose writes are
// slow; reads and lookups are not delayed. It stands in for a slow disk in the end-to-end tests
// (tests/e2e/slowdisk.rs); built and cached by tests/harness/build-slowfs.sh.
//
//	slowfs [--delay 1s] BACKING_DIR MOUNTPOINT
//
// Delayed: write, fsync (files and directories), flush (close) of a file written since its last
// fsync, create, mknod, mkdir, symlink, link, rename, unlink, rmdir, setattr (chmod, truncate,
// utimes, ...), setxattr and removexattr. Operations are served concurrently: one slow write does
// not hold up another caller's. Unlike a disk's page cache, writes go through at once (and wait),
// and the kernel holds a file's lock meanwhile: a read of a file waits for a write to it that is
// under way. Stat, lookups and reads of other files do not.
//
// Mounts with mount(2) itself (it must run as root; no fusermount), serves in the foreground, and
// on SIGTERM or SIGINT unmounts and exits; a mount still in use is detached (umount --lazy), and
// what still uses it then gets errors (ENOTCONN) instead of hanging.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// slow wraps go-fuse's loopback node; children are wrapped as they are made (WrapChild).
type slow struct {
	*fs.LoopbackNode
	fs *slowFS
}

// slowFS is what every node and open file shares.
type slowFS struct {
	delay time.Duration
}

func (s *slowFS) sleep() { time.Sleep(s.delay) }

func (n *slow) WrapChild(ctx context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	return &slow{LoopbackNode: ops.(*fs.LoopbackNode), fs: n.fs}
}

// File contents: the loopback's open file, wrapped.

type slowFile struct {
	*fs.LoopbackFile
	fs *slowFS
	// Written since the last fsync: its flush (each close) is slow too.
	dirty atomic.Bool
}

// PassthroughFd declines FUSE passthrough, with which the kernel would read and write the backing
// file itself, never asking slowfs.
func (f *slowFile) PassthroughFd() (int, bool) { return -1, false }

func (f *slowFile) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	f.fs.sleep()
	f.dirty.Store(true)
	return f.LoopbackFile.Write(ctx, data, off)
}

func (f *slowFile) Writev(ctx context.Context, data [][]byte, off int64) (uint32, syscall.Errno) {
	f.fs.sleep()
	f.dirty.Store(true)
	return f.LoopbackFile.Writev(ctx, data, off)
}

func (f *slowFile) Allocate(ctx context.Context, off, size uint64, mode uint32) syscall.Errno {
	f.fs.sleep()
	return f.LoopbackFile.Allocate(ctx, off, size, mode)
}

func (f *slowFile) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	f.fs.sleep()
	f.dirty.Store(false)
	return f.LoopbackFile.Fsync(ctx, flags)
}

func (f *slowFile) Flush(ctx context.Context) syscall.Errno {
	if f.dirty.Swap(false) {
		f.fs.sleep()
	}
	return f.LoopbackFile.Flush(ctx)
}

func (n *slow) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	h, fuseFlags, errno := n.LoopbackNode.Open(ctx, flags)
	if errno != 0 {
		return nil, 0, errno
	}
	return &slowFile{LoopbackFile: h.(*fs.LoopbackFile), fs: n.fs}, fuseFlags, 0
}

func (n *slow) Create(ctx context.Context, name string, flags, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	n.fs.sleep()
	inode, h, fuseFlags, errno := n.LoopbackNode.Create(ctx, name, flags, mode, out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	return inode, &slowFile{LoopbackFile: h.(*fs.LoopbackFile), fs: n.fs}, fuseFlags, 0
}

// Directories: go-fuse sends a directory's fsync to its handle, so the handle is wrapped.

type dirHandle interface {
	fs.FileReaddirenter
	fs.FileReleasedirer
	fs.FileSeekdirer
	fs.FileFsyncdirer
}

type slowDir struct {
	dirHandle
	fs *slowFS
}

func (d *slowDir) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	d.fs.sleep()
	return d.dirHandle.Fsyncdir(ctx, flags)
}

func (n *slow) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	h, fuseFlags, errno := n.LoopbackNode.OpendirHandle(ctx, flags)
	if errno != 0 {
		return nil, 0, errno
	}
	return &slowDir{dirHandle: h.(dirHandle), fs: n.fs}, fuseFlags, 0
}

// Metadata.

func (n *slow) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	n.fs.sleep()
	return n.LoopbackNode.Mknod(ctx, name, mode, rdev, out)
}

func (n *slow) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	n.fs.sleep()
	return n.LoopbackNode.Mkdir(ctx, name, mode, out)
}

func (n *slow) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	n.fs.sleep()
	return n.LoopbackNode.Symlink(ctx, target, name, out)
}

func (n *slow) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	n.fs.sleep()
	return n.LoopbackNode.Link(ctx, target, name, out)
}

func (n *slow) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	n.fs.sleep()
	return n.LoopbackNode.Rename(ctx, name, newParent, newName, flags)
}

func (n *slow) Unlink(ctx context.Context, name string) syscall.Errno {
	n.fs.sleep()
	return n.LoopbackNode.Unlink(ctx, name)
}

func (n *slow) Rmdir(ctx context.Context, name string) syscall.Errno {
	n.fs.sleep()
	return n.LoopbackNode.Rmdir(ctx, name)
}

func (n *slow) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	n.fs.sleep()
	return n.LoopbackNode.Setattr(ctx, f, in, out)
}

func (n *slow) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	n.fs.sleep()
	return n.LoopbackNode.Setxattr(ctx, attr, data, flags)
}

func (n *slow) Removexattr(ctx context.Context, attr string) syscall.Errno {
	n.fs.sleep()
	return n.LoopbackNode.Removexattr(ctx, attr)
}

func main() {
	delay := flag.Duration("delay", time.Second, "how long each write or metadata change takes")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: slowfs [--delay 1s] BACKING_DIR MOUNTPOINT")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 2 {
		flag.Usage()
		os.Exit(2)
	}
	backing, mountpoint := flag.Arg(0), flag.Arg(1)
	loopback, err := fs.NewLoopbackRoot(backing)
	if err != nil {
		fmt.Fprintf(os.Stderr, "slowfs: %v\n", err)
		os.Exit(1)
	}
	root := &slow{LoopbackNode: loopback.(*fs.LoopbackNode), fs: &slowFS{delay: *delay}}
	root.RootData.RootNode = root
	// Only slowfs changes the backing directory, so the kernel may keep what it looked up.
	cache := 10 * time.Second
	server, err := fs.Mount(mountpoint, root, &fs.Options{
		EntryTimeout: &cache,
		AttrTimeout:  &cache,
		MountOptions: fuse.MountOptions{
			FsName:            backing,
			Name:              "slowfs",
			DirectMountStrict: true,
		},
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "slowfs: mounting %s: %v\n", mountpoint, err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "slowfs: %s mounted on %s, writes take %v\n", backing, mountpoint, *delay)
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-signals
		if err := server.Unmount(); err != nil {
			// Busy, or detached already: detach it (lazily), and exiting ends the connection.
			fmt.Fprintf(os.Stderr, "slowfs: unmounting %s: %v; detaching it\n", mountpoint, err)
			syscall.Unmount(mountpoint, syscall.MNT_DETACH)
			os.Exit(0)
		}
	}()
	server.Wait()
}
