// hvlab shared memory: a file under /dev/shm, mmap'ed and handed to JavaScript as a real
// SharedArrayBuffer (V8 backing store with a munmap deleter), so Atomics work across processes.
// Uses V8 directly because N-API can only make (non-shared) ArrayBuffers. Also: a futex that works
// across processes, child reaping for the host's anchor, process exit watches (pidfd), and a
// memmove between buffers (V8 copies into a SharedArrayBuffer with relaxed atomic accesses), and
// futex word watches that call back on the event loop.
#include <node.h>
#include <v8.h>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <climits>
#include <ctime>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unordered_map>
#include <uv.h>
#include <pthread.h>
#include <atomic>
#include <memory>
#include <sys/ioctl.h>
#include <linux/userfaultfd.h>
#include <vector>
#include <poll.h>
#include <thread>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <mutex>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

namespace {

using v8::BackingStore;
using v8::Exception;
using v8::FunctionCallbackInfo;
using v8::Isolate;
using v8::Local;
using v8::Object;
using v8::SharedArrayBuffer;
using v8::String;
using v8::Value;

void Throw(Isolate* isolate, const std::string& msg, int err) {
  std::string full = msg;
  if (err != 0) { full += ": "; full += std::strerror(err); }
  Local<Value> ex = Exception::Error(String::NewFromUtf8(isolate, full.c_str()).ToLocalChecked());
  if (err != 0) {
    Local<Object> obj = ex.As<Object>();
    obj->Set(isolate->GetCurrentContext(), String::NewFromUtf8(isolate, "errno").ToLocalChecked(),
             v8::Integer::New(isolate, err)).Check();
  }
  isolate->ThrowException(ex);
}

void Unmap(void* data, size_t length, void* /*deleter_data*/) {
  if (data != nullptr && length > 0) munmap(data, length);
}

// map(name: string, size: number, create: boolean) -> SharedArrayBuffer
// create=true: O_CREAT|O_EXCL, ftruncate to size. create=false: open existing; size 0 = whole file.
void Map(const FunctionCallbackInfo<Value>& args) {
  Isolate* isolate = args.GetIsolate();
  if (args.Length() < 3 || !args[0]->IsString() || !args[1]->IsNumber() || !args[2]->IsBoolean()) {
    Throw(isolate, "shm.map(name, size, create) takes a string, a number and a boolean", 0);
    return;
  }
  String::Utf8Value name(isolate, args[0]);
  double sizeD = args[1].As<v8::Number>()->Value();
  bool create = args[2].As<v8::Boolean>()->Value();
  std::string path = std::string("/") + *name;
  int fd = shm_open(path.c_str(), create ? (O_RDWR | O_CREAT | O_EXCL) : O_RDWR, 0600);
  if (fd < 0) { Throw(isolate, std::string("shm_open ") + path, errno); return; }
  size_t size = static_cast<size_t>(sizeD);
  if (create) {
    if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
      int e = errno; close(fd); shm_unlink(path.c_str());
      Throw(isolate, std::string("ftruncate ") + path, e); return;
    }
  } else {
    struct stat st;
    if (fstat(fd, &st) != 0) { int e = errno; close(fd); Throw(isolate, "fstat " + path, e); return; }
    if (size == 0) size = static_cast<size_t>(st.st_size);
    if (size > static_cast<size_t>(st.st_size)) {
      close(fd); Throw(isolate, "shm file " + path + " is smaller than the requested size", 0); return;
    }
  }
  if (size == 0) { close(fd); Throw(isolate, "shm file " + path + " is empty", 0); return; }
  void* data = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int e = errno;
  close(fd);
  if (data == MAP_FAILED) {
    if (create) shm_unlink(path.c_str());
    Throw(isolate, "mmap " + path, e); return;
  }
  std::unique_ptr<BackingStore> store = SharedArrayBuffer::NewBackingStore(data, size, Unmap, nullptr);
  Local<SharedArrayBuffer> sab = SharedArrayBuffer::New(isolate, std::move(store));
  args.GetReturnValue().Set(sab);
}

// unlink(name: string) -> boolean (false when it did not exist)
void Unlink(const FunctionCallbackInfo<Value>& args) {
  Isolate* isolate = args.GetIsolate();
  if (args.Length() < 1 || !args[0]->IsString()) { Throw(isolate, "shm.unlink(name) takes a string", 0); return; }
  String::Utf8Value name(isolate, args[0]);
  std::string path = std::string("/") + *name;
  if (shm_unlink(path.c_str()) != 0) {
    if (errno == ENOENT) { args.GetReturnValue().Set(false); return; }
    Throw(isolate, "shm_unlink " + path, errno); return;
  }
  args.GetReturnValue().Set(true);
}

// The address of Int32 word `index` of a SharedArrayBuffer, or nullptr after throwing.
int32_t* WordAddress(const FunctionCallbackInfo<Value>& args, const char* what) {
  Isolate* isolate = args.GetIsolate();
  if (args.Length() < 2 || !args[0]->IsSharedArrayBuffer() || !args[1]->IsNumber()) {
    Throw(isolate, std::string(what) + " takes a SharedArrayBuffer and a word index", 0);
    return nullptr;
  }
  Local<SharedArrayBuffer> sab = args[0].As<SharedArrayBuffer>();
  double idx = args[1].As<v8::Number>()->Value();
  size_t len = sab->ByteLength();
  if (!(idx >= 0) || idx != static_cast<double>(static_cast<size_t>(idx)) || (static_cast<size_t>(idx) + 1) * 4 > len) {
    Throw(isolate, std::string(what) + ": word index is outside the buffer", 0);
    return nullptr;
  }
  return static_cast<int32_t*>(sab->Data()) + static_cast<size_t>(idx);
}

// futexWait(sab, index, expected, timeoutMs) -> 'ok' | 'not-equal' | 'timed-out'
// A shared (not PRIVATE) futex, so a wake from another process that maps the same file reaches
// it; V8's Atomics.wait only sees wakes from its own process. timeoutMs < 0 waits forever.
void FutexWait(const FunctionCallbackInfo<Value>& args) {
  Isolate* isolate = args.GetIsolate();
  int32_t* addr = WordAddress(args, "futexWait");
  if (addr == nullptr) return;
  if (args.Length() < 4 || !args[2]->IsNumber() || !args[3]->IsNumber()) {
    Throw(isolate, "futexWait(sab, index, expected, timeoutMs) takes numbers", 0); return;
  }
  int32_t expected = static_cast<int32_t>(args[2].As<v8::Number>()->Value());
  double ms = args[3].As<v8::Number>()->Value();
  struct timespec ts;
  struct timespec* tsp = nullptr;
  if (ms >= 0) {
    if (ms > 86400000.0) ms = 86400000.0;
    ts.tv_sec = static_cast<time_t>(ms / 1000);
    ts.tv_nsec = static_cast<long>((ms - ts.tv_sec * 1000.0) * 1e6);
    tsp = &ts;
  }
  long r = syscall(SYS_futex, addr, FUTEX_WAIT, expected, tsp, nullptr, 0);
  const char* out = "ok";
  if (r != 0) {
    if (errno == EAGAIN) out = "not-equal";
    else if (errno == ETIMEDOUT) out = "timed-out";
    else if (errno == EINTR) out = "ok";
    else { Throw(isolate, "futex wait", errno); return; }
  }
  args.GetReturnValue().Set(String::NewFromUtf8(isolate, out).ToLocalChecked());
}

// futexWake(sab, index, count) -> number of waiters woken (in any process)
void FutexWake(const FunctionCallbackInfo<Value>& args) {
  Isolate* isolate = args.GetIsolate();
  int32_t* addr = WordAddress(args, "futexWake");
  if (addr == nullptr) return;
  int count = INT_MAX;
  if (args.Length() >= 3 && args[2]->IsNumber()) count = static_cast<int>(args[2].As<v8::Number>()->Value());
  long r = syscall(SYS_futex, addr, FUTEX_WAKE, count, nullptr, nullptr, 0);
  if (r < 0) { Throw(isolate, "futex wake", errno); return; }
  args.GetReturnValue().Set(v8::Integer::New(isolate, static_cast<int32_t>(r)));
}

// yieldCpu(): sched_yield(), for a thread that woke another and has only bookkeeping left: a
// woken thread the kernel queued behind it on its CPU runs first.
void YieldCpu(const FunctionCallbackInfo<Value>& args) {
  (void)args;
  sched_yield();
}

// setChildSubreaper() -> true: orphaned descendants are re-parented to this process instead of
// init, so the host's anchor can reap the workers of a root partition that died (PID 1 of a
// container often never reaps, and a zombie still answers kill(pid, 0)).
void SetChildSubreaper(const FunctionCallbackInfo<Value>& args) {
  Isolate* isolate = args.GetIsolate();
  if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) { Throw(isolate, "prctl(PR_SET_CHILD_SUBREAPER)", errno); return; }
  args.GetReturnValue().Set(true);
}

// reapChild(pid) -> true when `pid` was a child of ours that had exited and is now reaped,
// false when it is still running or not our child. Never waits.
void ReapChild(const FunctionCallbackInfo<Value>& args) {
  Isolate* isolate = args.GetIsolate();
  if (args.Length() < 1 || !args[0]->IsNumber()) { Throw(isolate, "reapChild(pid) needs a pid", 0); return; }
  double d = args[0].As<v8::Number>()->Value();
  if (!(d >= 1 && d <= 4194304)) { Throw(isolate, "reapChild: pid out of range", 0); return; }
  int status = 0;
  pid_t r = waitpid(static_cast<pid_t>(d), &status, WNOHANG);
  args.GetReturnValue().Set(r > 0);
}

// ---- process exit watches: a pidfd in the calling thread's event loop ---------------------------
// pidfd_open (Linux 5.3+) gives a descriptor that polls readable once the process has exited
// (a zombie counts), and it names that process, not a pid number that may be reused. libuv
// watches it with epoll like any socket, so a watch costs nothing until the process dies.

// What a watch that calls back into JavaScript holds (the pid and the word watches alike): its
// id, the function and context to call, and its environment cleanup hook.
struct JsWatch {
  int32_t id = 0;
  Isolate* isolate = nullptr;
  v8::Global<v8::Context> context;
  v8::Global<v8::Function> callback;
  node::AsyncCleanupHookHandle cleanup;
  // Set by the environment's cleanup hook (a worker thread or the process ending): call done(arg) once closed.
  void (*done)(void*) = nullptr;
  void* doneArg = nullptr;
  virtual ~JsWatch() = default;
};

// Binds a new watch to the calling thread's context and `fn`, and gives it the next id.
void BindJs(JsWatch* w, Isolate* isolate, Local<v8::Function> fn, int32_t& nextId) {
  w->id = nextId++;
  if (nextId <= 0) nextId = 1;
  w->isolate = isolate;
  w->context.Reset(isolate, isolate->GetCurrentContext());
  w->callback.Reset(isolate, fn);
}

// Frees a watch whose libuv handle has closed, and tells a waiting cleanup hook.
void ReleaseJs(JsWatch* w) {
  void (*done)(void*) = w->done;
  void* doneArg = w->doneArg;
  if (done == nullptr && w->cleanup) node::RemoveEnvironmentCleanupHook(std::move(w->cleanup));
  w->context.Reset();
  w->callback.Reset();
  delete w;
  if (done != nullptr) done(doneArg);
}

// Calls the watch's function; `before` (the pid watch closing itself) runs once the function is in
// hand and before the call, which may unwatch.
void CallJs(JsWatch* w, void (*before)(JsWatch*) = nullptr) {
  Isolate* isolate = w->isolate;
  v8::HandleScope scope(isolate);
  Local<v8::Context> context = w->context.Get(isolate);
  Local<v8::Function> fn = w->callback.Get(isolate);
  if (before != nullptr) before(w);
  v8::Context::Scope contextScope(context);
  node::MakeCallback(isolate, context->Global(), fn, 0, nullptr, node::async_context{0, 0});
}

// The environment's cleanup hook for a watch of type W closed by Close.
template <class W, void (*Close)(W*)>
void JsWatchCleanupHook(void* arg, void (*done)(void*), void* doneArg) {
  W* w = static_cast<W*>(arg);
  w->done = done;
  w->doneArg = doneArg;
  Close(w);
}

// A descriptor polled in the calling thread's event loop (pidfds and wake descriptors alike). The
// watch owns the descriptor (closed with it) and sits in its kind's registry, by id, per thread
// (each worker thread has its own event loop and isolate).
struct FdWatch;
using FdWatches = std::unordered_map<int32_t, FdWatch*>;
struct FdWatch : JsWatch {
  uv_poll_t poll;
  int fd = -1;
  FdWatches* registry = nullptr;
};

thread_local FdWatches pidWatches;
thread_local int32_t nextPidWatchId = 1;

void OnFdWatchClosed(uv_handle_t* h) {
  FdWatch* w = static_cast<FdWatch*>(h->data);
  if (w->fd >= 0) close(w->fd);
  ReleaseJs(w);
}

// Stops and closes a watch (it is freed once libuv has closed the handle).
void CloseFdWatch(FdWatch* w) {
  w->registry->erase(w->id);
  uv_poll_stop(&w->poll);
  uv_close(reinterpret_cast<uv_handle_t*>(&w->poll), OnFdWatchClosed);
}

// Polls `fd` (which the watch then owns: closed on every path) for `events` in this thread's loop,
// calling `fn` through `onReady`; unref'd, closed with the environment. Returns the watch's id, or
// 0 after throwing (`what` names the descriptor in the message).
int32_t StartFdWatch(Isolate* isolate, uv_loop_t* loop, int fd, Local<v8::Function> fn, int events, uv_poll_cb onReady,
                     FdWatches& registry, int32_t& nextId, const char* what) {
  FdWatch* w = new FdWatch();
  w->fd = fd;
  w->registry = &registry;
  int r = uv_poll_init(loop, &w->poll, fd);
  if (r != 0) {
    close(fd);
    delete w;
    Throw(isolate, std::string("uv_poll_init on ") + what + ": " + uv_strerror(r), 0);
    return 0;
  }
  w->poll.data = w;
  BindJs(w, isolate, fn, nextId);
  r = uv_poll_start(&w->poll, events, onReady);
  if (r != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(&w->poll), OnFdWatchClosed);
    Throw(isolate, std::string("uv_poll_start on ") + what + ": " + uv_strerror(r), 0);
    return 0;
  }
  uv_unref(reinterpret_cast<uv_handle_t*>(&w->poll));
  w->cleanup = node::AddEnvironmentCleanupHook(isolate, JsWatchCleanupHook<FdWatch, CloseFdWatch>, w);
  registry[w->id] = w;
  return w->id;
}

// unwatch<Kind>(id) of `registry`: true when the watch was still active (no callback after this).
void UnwatchFd(const FunctionCallbackInfo<Value>& args, FdWatches& registry, const char* what) {
  Isolate* isolate = args.GetIsolate();
  if (args.Length() < 1 || !args[0]->IsNumber()) { Throw(isolate, std::string(what) + "(id) needs a watch id", 0); return; }
  auto it = registry.find(static_cast<int32_t>(args[0].As<v8::Number>()->Value()));
  if (it == registry.end()) { args.GetReturnValue().Set(false); return; }
  CloseFdWatch(it->second);
  args.GetReturnValue().Set(true);
}

void OnPidfdReadable(uv_poll_t* h, int /*status*/, int /*events*/) {
  // Readable means exited; an error on the descriptor cannot be told apart from it, so it counts too.
  // A pid watch fires once: it closes itself before calling.
  CallJs(static_cast<FdWatch*>(h->data), [](JsWatch* w) { CloseFdWatch(static_cast<FdWatch*>(w)); });
}

// watchPid(pid, callback) -> id: calls callback() once when process `pid` has exited. The watch
// does not keep the event loop alive (like an unref'd timer). Throws with errno (ESRCH: no such
// process; ENOSYS/EPERM: no pidfd here) when it cannot watch.
void WatchPid(const FunctionCallbackInfo<Value>& args) {
  Isolate* isolate = args.GetIsolate();
  if (args.Length() < 2 || !args[0]->IsNumber() || !args[1]->IsFunction()) {
    Throw(isolate, "watchPid(pid, callback) takes a pid and a function", 0); return;
  }
  double d = args[0].As<v8::Number>()->Value();
  // Any positive int32 is a pid to the kernel (past pid_max it is one that does not exist: ESRCH).
  if (!(d >= 1 && d <= INT_MAX) || d != static_cast<double>(static_cast<int>(d))) { Throw(isolate, "watchPid: pid out of range", 0); return; }
  uv_loop_t* loop = node::GetCurrentEventLoop(isolate);
  if (loop == nullptr) { Throw(isolate, "watchPid: no event loop in this thread", 0); return; }
  long fd = syscall(SYS_pidfd_open, static_cast<pid_t>(d), 0);
  if (fd < 0) { Throw(isolate, "pidfd_open", errno); return; }
  int32_t id = StartFdWatch(isolate, loop, static_cast<int>(fd), args[1].As<v8::Function>(), UV_READABLE | UV_DISCONNECT, OnPidfdReadable,
                            pidWatches, nextPidWatchId, "a pidfd");
  if (id != 0) args.GetReturnValue().Set(v8::Integer::New(isolate, id));
}

// unwatchPid(id) -> true when the watch was still active (its callback will not be called).
void UnwatchPid(const FunctionCallbackInfo<Value>& args) {
  UnwatchFd(args, pidWatches, "unwatchPid");
}

// ---- word watches: a shared futex word, watched from the event loop -----------------------------
// A small native thread (not a worker: no isolate, a 64 KiB stack) sleeps in FUTEX_WAIT on one
// word of a shared region and, each time it finds the word changed, wakes the owning thread's
// event loop (uv_async_send), which calls the JavaScript callback. So an event loop can wait on a
// futex that another process wakes, at the cost of one thread hop, without blocking. Wakes that
// arrive while a callback is pending coalesce into that callback: the callback reads what changed.

// Starts a native thread with a 64 KiB stack (it never runs JavaScript); pthread_create's result.
int StartSmallThread(pthread_t* t, void* (*fn)(void*), void* arg) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  int r = pthread_create(t, &attr, fn, arg);
  pthread_attr_destroy(&attr);
  return r;
}

struct WordWatch : JsWatch {
  uv_async_t async;
  pthread_t thread;
  bool threadStarted = false;
  std::shared_ptr<BackingStore> store;  // keeps the mapping alive while the thread reads it
  int32_t* addr = nullptr;
  // The word's value when the watch was made: a change right after watchWord returns is a change.
  int32_t initial = 0;
  std::atomic<bool> stop{false};
};

thread_local std::unordered_map<int32_t, WordWatch*> wordWatches;
thread_local int32_t nextWordWatchId = 1;

void* WordWatchThread(void* arg) {
  WordWatch* w = static_cast<WordWatch*>(arg);
  int32_t last = w->initial;
  while (!w->stop.load()) {
    syscall(SYS_futex, w->addr, FUTEX_WAIT, last, nullptr, nullptr, 0);
    if (w->stop.load()) break;
    int32_t cur = __atomic_load_n(w->addr, __ATOMIC_SEQ_CST);
    if (cur != last) {
      last = cur;
      uv_async_send(&w->async);
    }
  }
  return nullptr;
}

void OnWordWatchClosed(uv_handle_t* h) {
  ReleaseJs(static_cast<WordWatch*>(h->data));
}

// Stops the thread (wakes it and joins: it only ever sleeps in the futex) and closes the handle.
// One wake is not enough: a thread that has looked at `stop` but not yet entered FUTEX_WAIT misses
// it and sleeps on, the word unchanged, and the join then held this thread for good (a test's
// event loop stopped in unwatchWord and hung the whole suite). So the wake repeats until the join
// succeeds: once the thread sleeps, the next wake reaches it.
void CloseWordWatch(WordWatch* w) {
  wordWatches.erase(w->id);
  w->stop.store(true);
  if (w->threadStarted) {
    for (;;) {
      syscall(SYS_futex, w->addr, FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
      struct timespec until;
      clock_gettime(CLOCK_MONOTONIC, &until);
      until.tv_nsec += 2 * 1000 * 1000;
      if (until.tv_nsec >= 1000 * 1000 * 1000) {
        until.tv_sec += 1;
        until.tv_nsec -= 1000 * 1000 * 1000;
      }
      if (pthread_clockjoin_np(w->thread, nullptr, CLOCK_MONOTONIC, &until) != ETIMEDOUT) break;
    }
    w->threadStarted = false;
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&w->async), OnWordWatchClosed);
}

void OnWordChanged(uv_async_t* h) {
  WordWatch* w = static_cast<WordWatch*>(h->data);
  if (!w->stop.load()) CallJs(w);
}

// watchWord(sab, index, callback) -> id: calls callback() (on this thread's event loop) after Int32
// word `index` of `sab` changed and a futex wake on it was sent. Does not keep the loop alive.
void WatchWord(const FunctionCallbackInfo<Value>& args) {
  Isolate* isolate = args.GetIsolate();
  int32_t* addr = WordAddress(args, "watchWord");
  if (addr == nullptr) return;
  if (args.Length() < 3 || !args[2]->IsFunction()) { Throw(isolate, "watchWord(sab, index, callback) needs a function", 0); return; }
  uv_loop_t* loop = node::GetCurrentEventLoop(isolate);
  if (loop == nullptr) { Throw(isolate, "watchWord: no event loop in this thread", 0); return; }
  WordWatch* w = new WordWatch();
  w->store = args[0].As<SharedArrayBuffer>()->GetBackingStore();
  w->addr = addr;
  w->initial = __atomic_load_n(addr, __ATOMIC_SEQ_CST);
  int r = uv_async_init(loop, &w->async, OnWordChanged);
  if (r != 0) {
    delete w;
    Throw(isolate, std::string("uv_async_init: ") + uv_strerror(r), 0); return;
  }
  w->async.data = w;
  uv_unref(reinterpret_cast<uv_handle_t*>(&w->async));
  BindJs(w, isolate, args[2].As<v8::Function>(), nextWordWatchId);
  r = StartSmallThread(&w->thread, WordWatchThread, w);
  if (r != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(&w->async), OnWordWatchClosed);
    Throw(isolate, "watchWord: pthread_create", r); return;
  }
  w->threadStarted = true;
  w->cleanup = node::AddEnvironmentCleanupHook(isolate, JsWatchCleanupHook<WordWatch, CloseWordWatch>, w);
  wordWatches[w->id] = w;
  args.GetReturnValue().Set(v8::Integer::New(isolate, w->id));
}

// unwatchWord(id) -> true when the watch was active (no callback after this returns).
void UnwatchWord(const FunctionCallbackInfo<Value>& args) {
  Isolate* isolate = args.GetIsolate();
  if (args.Length() < 1 || !args[0]->IsNumber()) { Throw(isolate, "unwatchWord(id) needs a watch id", 0); return; }
  auto it = wordWatches.find(static_cast<int32_t>(args[0].As<v8::Number>()->Value()));
  if (it == wordWatches.end()) { args.GetReturnValue().Set(false); return; }
  CloseWordWatch(it->second);
  args.GetReturnValue().Set(true);
}

// ---- wake descriptors: another process's event loop, woken with one write ----------------------
// A word watch costs two wake-ups of sleeping threads (its own thread, then the event loop); on a
// virtual machine whose idle CPUs halt, each is tens of microseconds. An eventfd that the other
// process's event loop polls costs one. The waker makes the eventfd (wakeFdOpen) and names it to
// the watcher by (its pid, the descriptor number); the watcher takes its own copy with
// pidfd_getfd (Linux 5.6+; it needs the rights of ptrace attach, which a process of the same user
// has unless a security module says otherwise: the caller falls back to a word watch) and polls it
// in its event loop (watchWakeFd). The waker's threads signal by id through one table for the
// process under a mutex, so a signal racing a close never writes to a descriptor number the
// process has since reused for something else.

std::mutex wakeFdsMutex;
std::unordered_map<int32_t, int> wakeFds;
int32_t nextWakeFdId = 1;

// wakeFdOpen() -> { id, fd }: a new non-blocking eventfd of this process, signalled by id.
void WakeFdOpen(const FunctionCallbackInfo<Value>& args) {
  Isolate* isolate = args.GetIsolate();
  int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) { Throw(isolate, "eventfd", errno); return; }
  int32_t id;
  {
    std::lock_guard<std::mutex> lock(wakeFdsMutex);
    id = nextWakeFdId++;
    if (nextWakeFdId <= 0) nextWakeFdId = 1;
    wakeFds[id] = fd;
  }
  Local<v8::Context> context = isolate->GetCurrentContext();
  Local<Object> out = Object::New(isolate);
  out->Set(context, String::NewFromUtf8(isolate, "id").ToLocalChecked(), v8::Integer::New(isolate, id)).Check();
  out->Set(context, String::NewFromUtf8(isolate, "fd").ToLocalChecked(), v8::Integer::New(isolate, fd)).Check();
  args.GetReturnValue().Set(out);
}

int32_t WakeFdId(const FunctionCallbackInfo<Value>& args, const char* what) {
  if (args.Length() < 1 || !args[0]->IsNumber()) {
    Throw(args.GetIsolate(), std::string(what) + "(id) needs a wake descriptor's id", 0);
    return 0;
  }
  double d = args[0].As<v8::Number>()->Value();
  return (d >= 1 && d <= INT_MAX) ? static_cast<int32_t>(d) : -1;
}

// wakeFdSignal(id) -> false when no such descriptor is open (closed meanwhile): adds 1 to it, which
// makes it readable for whoever polls it. Any thread of the process.
void WakeFdSignal(const FunctionCallbackInfo<Value>& args) {
  int32_t id = WakeFdId(args, "wakeFdSignal");
  if (id == 0) return;
  bool found = false;
  {
    std::lock_guard<std::mutex> lock(wakeFdsMutex);
    auto it = wakeFds.find(id);
    if (it != wakeFds.end()) {
      found = true;
      uint64_t one = 1;
      // EAGAIN only when the counter would pass 2^64-2: it is readable already.
      ssize_t r = write(it->second, &one, sizeof one);
      (void)r;
    }
  }
  args.GetReturnValue().Set(found);
}

// wakeFdClose(id) -> whether it was open. Copies other processes took stay valid (and silent).
void WakeFdClose(const FunctionCallbackInfo<Value>& args) {
  int32_t id = WakeFdId(args, "wakeFdClose");
  if (id == 0) return;
  int fd = -1;
  {
    std::lock_guard<std::mutex> lock(wakeFdsMutex);
    auto it = wakeFds.find(id);
    if (it != wakeFds.end()) {
      fd = it->second;
      wakeFds.erase(it);
      close(fd);
    }
  }
  args.GetReturnValue().Set(fd >= 0);
}

thread_local FdWatches wakeWatches;
thread_local int32_t nextWakeWatchId = 1;

void OnWakeFdReadable(uv_poll_t* h, int status, int /*events*/) {
  FdWatch* w = static_cast<FdWatch*>(h->data);
  // One read takes the whole count (the descriptor is not a semaphore): readable again only
  // after the next signal. Signals that came meanwhile coalesce into this call.
  uint64_t v;
  ssize_t r = read(w->fd, &v, sizeof v);
  (void)r;
  (void)status;
  CallJs(w);
}

// Whether `fd` (of this process) is an eventfd: its /proc link names the anonymous inode.
bool IsEventFd(int fd) {
  char path[64];
  char link[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(path, link, sizeof link - 1);
  if (n < 0) return false;
  link[n] = 0;
  return strcmp(link, "anon_inode:[eventfd]") == 0;
}

// watchWakeFd(pid, fd, callback) -> id: takes a copy of descriptor `fd` of process `pid`, which
// must be an eventfd, and calls callback() on this thread's event loop each time it is signalled
// (signals that arrive while a call is pending coalesce). Does not keep the loop alive. Throws with
// errno (ESRCH: no such process; EBADF: no such descriptor; EPERM: not allowed here; ENOSYS: too
// old a kernel; EINVAL: not an eventfd).
void WatchWakeFd(const FunctionCallbackInfo<Value>& args) {
  Isolate* isolate = args.GetIsolate();
  if (args.Length() < 3 || !args[0]->IsNumber() || !args[1]->IsNumber() || !args[2]->IsFunction()) {
    Throw(isolate, "watchWakeFd(pid, fd, callback) takes a pid, a descriptor number and a function", 0); return;
  }
  double pid = args[0].As<v8::Number>()->Value();
  double target = args[1].As<v8::Number>()->Value();
  if (!(pid >= 1 && pid <= INT_MAX) || pid != static_cast<double>(static_cast<int>(pid))) { Throw(isolate, "watchWakeFd: pid out of range", 0); return; }
  if (!(target >= 0 && target <= INT_MAX) || target != static_cast<double>(static_cast<int>(target))) { Throw(isolate, "watchWakeFd: descriptor out of range", 0); return; }
  uv_loop_t* loop = node::GetCurrentEventLoop(isolate);
  if (loop == nullptr) { Throw(isolate, "watchWakeFd: no event loop in this thread", 0); return; }
  long pidfd = syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0);
  if (pidfd < 0) { Throw(isolate, "pidfd_open", errno); return; }
  long fd = syscall(SYS_pidfd_getfd, static_cast<int>(pidfd), static_cast<int>(target), 0);
  int err = errno;
  close(static_cast<int>(pidfd));
  if (fd < 0) { Throw(isolate, "pidfd_getfd", err); return; }
  if (!IsEventFd(static_cast<int>(fd))) {
    close(static_cast<int>(fd));
    Throw(isolate, "watchWakeFd: the descriptor is not an eventfd", EINVAL); return;
  }
  // The copy shares the waker's file description: non-blocking already when the waker made it
  // with wakeFdOpen; made so here otherwise, as a read in the event loop must never block.
  int flags = fcntl(static_cast<int>(fd), F_GETFL);
  if (flags >= 0 && !(flags & O_NONBLOCK)) fcntl(static_cast<int>(fd), F_SETFL, flags | O_NONBLOCK);
  int32_t id = StartFdWatch(isolate, loop, static_cast<int>(fd), args[2].As<v8::Function>(), UV_READABLE, OnWakeFdReadable,
                            wakeWatches, nextWakeWatchId, "an eventfd");
  if (id != 0) args.GetReturnValue().Set(v8::Integer::New(isolate, id));
}

// unwatchWakeFd(id) -> true when the watch was active (no callback after this returns).
void UnwatchWakeFd(const FunctionCallbackInfo<Value>& args) {
  UnwatchFd(args, wakeWatches, "unwatchWakeFd");
}

// ---- copyBytes: memcpy between any two buffers ---------------------------------------------------
// V8 copies into or out of a SharedArrayBuffer with relaxed atomic accesses (Uint8Array.prototype.set
// reaches 0.2-0.5 of a plain memcpy at 16 KiB); a plain memmove here runs at memory speed. Bytes
// another process writes meanwhile are the business of whatever protocol shares the memory (the
// ring's indices say which bytes are stable), as they are with V8's copy.

void ThrowType(Isolate* isolate, const std::string& msg) {
  isolate->ThrowException(Exception::TypeError(String::NewFromUtf8(isolate, msg.c_str()).ToLocalChecked()));
}
void ThrowRange(Isolate* isolate, const std::string& msg) {
  isolate->ThrowException(Exception::RangeError(String::NewFromUtf8(isolate, msg.c_str()).ToLocalChecked()));
}

// The bytes of an ArrayBuffer, a SharedArrayBuffer or a view (TypedArray, DataView, Buffer) of
// one; false after throwing a TypeError for anything else. A detached buffer has 0 bytes.
bool BufferBytes(Isolate* isolate, Local<Value> v, const char* which, uint8_t** data, size_t* length) {
  if (v->IsArrayBufferView()) {
    Local<v8::ArrayBufferView> view = v.As<v8::ArrayBufferView>();
    size_t len = view->ByteLength();
    *length = len;
    // Buffer() materialises an on-heap typed array; only look when there are bytes to copy.
    *data = len == 0 ? nullptr : static_cast<uint8_t*>(view->Buffer()->Data()) + view->ByteOffset();
    return true;
  }
  if (v->IsSharedArrayBuffer()) {
    Local<SharedArrayBuffer> sab = v.As<SharedArrayBuffer>();
    *data = static_cast<uint8_t*>(sab->Data());
    *length = sab->ByteLength();
    return true;
  }
  if (v->IsArrayBuffer()) {
    Local<v8::ArrayBuffer> ab = v.As<v8::ArrayBuffer>();
    *data = static_cast<uint8_t*>(ab->Data());
    *length = ab->ByteLength();
    return true;
  }
  ThrowType(isolate, std::string("copyBytes: the ") + which + " is not an ArrayBuffer, a SharedArrayBuffer or a view of one");
  return false;
}

// A byte offset or count: a whole number in [0, 2^53); false after throwing.
bool ByteCount(Isolate* isolate, Local<Value> v, const char* what, size_t* out) {
  if (v->IsUint32()) { *out = v.As<v8::Uint32>()->Value(); return true; }
  if (!v->IsNumber()) { ThrowType(isolate, std::string("copyBytes: the ") + what + " is not a number"); return false; }
  double d = v.As<v8::Number>()->Value();
  if (!(d >= 0 && d <= 9007199254740991.0) || d != static_cast<double>(static_cast<uint64_t>(d))) {
    char num[32];
    std::snprintf(num, sizeof num, "%.17g", d);
    ThrowRange(isolate, std::string("copyBytes: the ") + what + " " + num + " is not a non-negative whole number");
    return false;
  }
  *out = static_cast<size_t>(d);
  return true;
}

// copyBytes(dst, dstOffset, src, srcOffset, length) -> undefined
// Copies `length` bytes; offsets count from the start of each view (or buffer). Overlapping ranges
// of one buffer are copied as if through a temporary (memmove). Throws TypeError/RangeError, never
// copies partly.
void CopyBytes(const FunctionCallbackInfo<Value>& args) {
  Isolate* isolate = args.GetIsolate();
  if (args.Length() < 5) { ThrowType(isolate, "copyBytes(dst, dstOffset, src, srcOffset, length) takes five arguments"); return; }
  uint8_t* dst = nullptr;
  uint8_t* src = nullptr;
  size_t dstLen = 0, srcLen = 0, dstOff = 0, srcOff = 0, len = 0;
  if (!BufferBytes(isolate, args[0], "destination", &dst, &dstLen)) return;
  if (!ByteCount(isolate, args[1], "destination offset", &dstOff)) return;
  if (!BufferBytes(isolate, args[2], "source", &src, &srcLen)) return;
  if (!ByteCount(isolate, args[3], "source offset", &srcOff)) return;
  if (!ByteCount(isolate, args[4], "length", &len)) return;
  if (dstOff > dstLen || len > dstLen - dstOff) {
    ThrowRange(isolate, "copyBytes: " + std::to_string(len) + " bytes at destination offset " + std::to_string(dstOff) +
                            " do not fit in the destination's " + std::to_string(dstLen) + " bytes");
    return;
  }
  if (srcOff > srcLen || len > srcLen - srcOff) {
    ThrowRange(isolate, "copyBytes: " + std::to_string(len) + " bytes at source offset " + std::to_string(srcOff) +
                            " lie outside the source's " + std::to_string(srcLen) + " bytes");
    return;
  }
  if (len == 0) return;
  std::memmove(dst + dstOff, src + srcOff, len);
}

// ---- kernel dirty-page tracking: userfaultfd write-protect (async) + PAGEMAP_SCAN -------------
// Debian's headers predate both (REFERENCE, "Dirty-page tracking on this kernel"): define them.
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
struct HvPmScanArg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted, category_mask, category_anyof_mask, return_mask;
};
struct HvPageRegion {
  uint64_t start, end, categories;
};
constexpr uint64_t kPmScanWpMatching = 1 << 0;
constexpr uint64_t kPmScanCheckWpAsync = 1 << 1;
constexpr uint64_t kPageIsWritten = 1 << 1;
#define HV_PAGEMAP_SCAN _IOWR('f', 16, struct HvPmScanArg)

struct WpTracker {
  int uffd = -1;
  int pagemap = -1;
  uintptr_t start = 0;
  size_t length = 0;
  // Keeps the mapping alive while it is tracked.
  std::shared_ptr<BackingStore> store;
};
std::unordered_map<int32_t, std::unique_ptr<WpTracker>> wpTrackers;
int32_t nextWpId = 1;

void CloseTracker(WpTracker* t) {
  if (t->uffd >= 0) close(t->uffd);
  if (t->pagemap >= 0) close(t->pagemap);
  t->uffd = t->pagemap = -1;
}

// wpTrack(sab) -> id. Registers the whole mapping behind `sab` (this process's mapping) with a
// userfaultfd in async write-protect mode and protects it: from now on the kernel marks every
// page written through this mapping (by any thread of this process), without a fault reaching us.
void WpTrack(const FunctionCallbackInfo<Value>& args) {
  Isolate* isolate = args.GetIsolate();
  if (args.Length() < 1 || !args[0]->IsSharedArrayBuffer()) { Throw(isolate, "wpTrack(sab) takes a SharedArrayBuffer", 0); return; }
  Local<SharedArrayBuffer> sab = args[0].As<SharedArrayBuffer>();
  auto t = std::make_unique<WpTracker>();
  t->store = sab->GetBackingStore();
  t->start = reinterpret_cast<uintptr_t>(sab->Data());
  t->length = sab->ByteLength();
  long page = sysconf(_SC_PAGESIZE);
  if (t->length == 0 || t->start % page != 0 || t->length % page != 0) { Throw(isolate, "wpTrack: the buffer is not a whole number of pages at a page boundary", 0); return; }
  t->uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
  if (t->uffd < 0) { Throw(isolate, "userfaultfd", errno); return; }
  struct uffdio_api api;
  std::memset(&api, 0, sizeof api);
  api.api = UFFD_API;
  api.features = UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_ASYNC;
  if (ioctl(t->uffd, UFFDIO_API, &api) != 0) { int e = errno; CloseTracker(t.get()); Throw(isolate, "UFFDIO_API (async write-protect)", e); return; }
  struct uffdio_register reg;
  std::memset(&reg, 0, sizeof reg);
  reg.range.start = t->start;
  reg.range.len = t->length;
  reg.mode = UFFDIO_REGISTER_MODE_WP;
  if (ioctl(t->uffd, UFFDIO_REGISTER, &reg) != 0) { int e = errno; CloseTracker(t.get()); Throw(isolate, "UFFDIO_REGISTER (write-protect)", e); return; }
  struct uffdio_writeprotect wp;
  std::memset(&wp, 0, sizeof wp);
  wp.range.start = t->start;
  wp.range.len = t->length;
  wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
  if (ioctl(t->uffd, UFFDIO_WRITEPROTECT, &wp) != 0) { int e = errno; CloseTracker(t.get()); Throw(isolate, "UFFDIO_WRITEPROTECT", e); return; }
  t->pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (t->pagemap < 0) { int e = errno; CloseTracker(t.get()); Throw(isolate, "open /proc/self/pagemap", e); return; }
  int32_t id = nextWpId++;
  wpTrackers[id] = std::move(t);
  args.GetReturnValue().Set(id);
}

// wpHarvest(id, bitmap: Int32Array) -> pages. Fetch-and-clear: every page written since the last
// harvest (or since wpTrack) is OR-ed into `bitmap` (bit p & 31 of word p >> 5 for page p of the
// mapping) and write-protected again, in one PAGEMAP_SCAN walk per batch of regions.
void WpHarvest(const FunctionCallbackInfo<Value>& args) {
  Isolate* isolate = args.GetIsolate();
  if (args.Length() < 2 || !args[0]->IsInt32() || !args[1]->IsInt32Array()) { Throw(isolate, "wpHarvest(id, bitmap) takes a tracker id and an Int32Array", 0); return; }
  auto it = wpTrackers.find(args[0].As<v8::Int32>()->Value());
  if (it == wpTrackers.end() || it->second->uffd < 0) { Throw(isolate, "wpHarvest: no such tracker", 0); return; }
  WpTracker* t = it->second.get();
  Local<v8::Int32Array> arr = args[1].As<v8::Int32Array>();
  size_t pages = t->length / static_cast<size_t>(sysconf(_SC_PAGESIZE));
  if (arr->Length() * 32 < pages) { Throw(isolate, "wpHarvest: the bitmap has fewer bits than the mapping has pages", 0); return; }
  uint32_t* bits = reinterpret_cast<uint32_t*>(static_cast<uint8_t*>(arr->Buffer()->Data()) + arr->ByteOffset());
  const uint64_t pageSize = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  std::vector<HvPageRegion> vec(512);
  uint64_t cursor = t->start;
  const uint64_t end = t->start + t->length;
  double found = 0;
  while (cursor < end) {
    HvPmScanArg a;
    std::memset(&a, 0, sizeof a);
    a.size = sizeof a;
    a.flags = kPmScanWpMatching | kPmScanCheckWpAsync;
    a.start = cursor;
    a.end = end;
    a.vec = reinterpret_cast<uint64_t>(vec.data());
    a.vec_len = vec.size();
    a.category_mask = kPageIsWritten;
    a.return_mask = kPageIsWritten;
    long n = ioctl(t->pagemap, HV_PAGEMAP_SCAN, &a);
    if (n < 0) { Throw(isolate, "PAGEMAP_SCAN", errno); return; }
    for (long i = 0; i < n; i++) {
      for (uint64_t p = (vec[i].start - t->start) / pageSize, last = (vec[i].end - t->start) / pageSize; p < last; p++) {
        bits[p >> 5] |= 1u << (p & 31);
        found++;
      }
    }
    if (a.walk_end <= cursor) break;
    cursor = a.walk_end;
  }
  args.GetReturnValue().Set(found);
}

// wpUntrack(id) -> boolean. Closing the userfaultfd unregisters the range.
void WpUntrack(const FunctionCallbackInfo<Value>& args) {
  if (args.Length() < 1 || !args[0]->IsInt32()) { args.GetReturnValue().Set(false); return; }
  auto it = wpTrackers.find(args[0].As<v8::Int32>()->Value());
  if (it == wpTrackers.end()) { args.GetReturnValue().Set(false); return; }
  CloseTracker(it->second.get());
  wpTrackers.erase(it);
  args.GetReturnValue().Set(true);
}

// zeroPages(sab, firstPage, count, out: Uint8Array) -> zeros. out[i] = 1 when page firstPage + i
// (4 KiB) of the buffer is all zero bytes, else 0; returns how many were zero. Read-only.
void ZeroPages(const FunctionCallbackInfo<Value>& args) {
  Isolate* isolate = args.GetIsolate();
  if (args.Length() < 4 || !args[0]->IsSharedArrayBuffer() || !args[1]->IsUint32() || !args[2]->IsUint32() || !args[3]->IsUint8Array()) {
    ThrowType(isolate, "zeroPages(sab, firstPage, count, out) takes a SharedArrayBuffer, two whole numbers and a Uint8Array");
    return;
  }
  Local<SharedArrayBuffer> sab = args[0].As<SharedArrayBuffer>();
  size_t first = args[1].As<v8::Uint32>()->Value();
  size_t count = args[2].As<v8::Uint32>()->Value();
  Local<v8::Uint8Array> out = args[3].As<v8::Uint8Array>();
  if ((first + count) * 4096 > sab->ByteLength() || out->Length() < count) { ThrowRange(isolate, "zeroPages: the pages lie outside the buffer or the output is too short"); return; }
  const uint64_t* base = reinterpret_cast<const uint64_t*>(static_cast<const uint8_t*>(sab->Data()) + first * 4096);
  uint8_t* o = count == 0 ? nullptr : static_cast<uint8_t*>(out->Buffer()->Data()) + out->ByteOffset();
  uint32_t zeros = 0;
  // With the file behind the buffer (fd >= 0), holes are zero without reading them: a read through
  // a shared mapping would allocate every page of a hole (an idle VM's whole memory).
  int fd = args.Length() > 4 && args[4]->IsInt32() ? args[4].As<v8::Int32>()->Value() : -1;
  std::vector<uint8_t> hole;
  if (fd >= 0) {
    hole.assign(count, 0);
    off_t pos = static_cast<off_t>(first * 4096);
    const off_t end = static_cast<off_t>((first + count) * 4096);
    while (pos < end) {
      off_t d = lseek(fd, pos, SEEK_DATA);
      if (d < 0 || d >= end) {
        for (off_t q = pos; q < end; q += 4096) hole[(q / 4096) - first] = 1;
        break;
      }
      for (off_t q = pos; q + 4096 <= d; q += 4096) hole[(q / 4096) - first] = 1;
      off_t h = lseek(fd, d, SEEK_HOLE);
      if (h < 0 || h > end) h = end;
      pos = h > d ? (h + 4095) / 4096 * 4096 : d + 4096;
    }
  }
  for (size_t p = 0; p < count; p++) {
    if (fd >= 0 && hole[p]) { o[p] = 1; zeros++; continue; }
    const uint64_t* w = base + p * 512;
    uint64_t acc = 0;
    for (int i = 0; i < 512; i += 8) {
      acc |= w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] | w[i + 7];
      if (acc != 0) break;
    }
    o[p] = acc == 0 ? 1 : 0;
    zeros += acc == 0 ? 1 : 0;
  }
  args.GetReturnValue().Set(zeros);
}

// ---- post-copy: missing pages of a mapping fetched on demand -----------------------------------
// The partition process registers its mapping of guest memory with a userfaultfd in MISSING mode.
// A page that is not in the file's page cache (post-copy punched it out, or never had it) then
// stops the thread that touches it, in the kernel, and a native thread here (never JS: the JS
// thread may be the one stopped) posts its page number to a shared control region and waits. The
// VMWP, in another process, gets the page from the source and writes it through its own mapping
// (into the page cache); the thread here sees it resident (mincore) and wakes the stopped thread,
// whose access then finds the page. Control region (Int32 words): 0 requests posted (futex),
// 1 pages served (futex, bumped by the VMWP), 2 stop, 3 faults seen, 16.. a ring of 1024 page numbers.
constexpr int kPcReq = 0, kPcServed = 1, kPcStop = 2, kPcFaults = 3, kPcRing = 16, kPcRingLen = 1024;

struct PostcopyTracker {
  int uffd = -1;
  uintptr_t start = 0;
  size_t length = 0;
  std::shared_ptr<BackingStore> mem;
  std::shared_ptr<BackingStore> ctlStore;
  int32_t* ctl = nullptr;
  std::thread thread;
};
std::unordered_map<int32_t, std::unique_ptr<PostcopyTracker>> pcTrackers;
int32_t nextPcId = 1;

long FutexShared(int32_t* addr, int op, int32_t val, const struct timespec* ts) {
  return syscall(SYS_futex, addr, op, val, ts, nullptr, 0);
}

bool Resident(uintptr_t addr) {
  unsigned char v = 0;
  if (mincore(reinterpret_cast<void*>(addr), 4096, &v) != 0) return false;
  return (v & 1) != 0;
}

void WakeRange(int uffd, uintptr_t addr) {
  struct uffdio_range r;
  r.start = addr;
  r.len = 4096;
  ioctl(uffd, UFFDIO_WAKE, &r);
}

void PostcopyLoop(PostcopyTracker* t) {
  std::vector<uintptr_t> pending;
  std::atomic_ref<int32_t> stop(t->ctl[kPcStop]);
  std::atomic_ref<int32_t> req(t->ctl[kPcReq]);
  std::atomic_ref<int32_t> served(t->ctl[kPcServed]);
  std::atomic_ref<int32_t> faults(t->ctl[kPcFaults]);
  while (stop.load() == 0) {
    struct pollfd pfd = { t->uffd, POLLIN, 0 };
    int ready = poll(&pfd, 1, pending.empty() ? 50 : 0);
    bool posted = false;
    if (ready > 0) {
      struct uffd_msg msgs[16];
      ssize_t n = read(t->uffd, msgs, sizeof msgs);
      for (ssize_t i = 0; n > 0 && i < n / static_cast<ssize_t>(sizeof(struct uffd_msg)); i++) {
        if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
        uintptr_t addr = static_cast<uintptr_t>(msgs[i].arg.pagefault.address) & ~static_cast<uintptr_t>(4095);
        if (addr < t->start || addr >= t->start + t->length) continue;
        faults.fetch_add(1);
        if (Resident(addr)) { WakeRange(t->uffd, addr); continue; }
        int32_t k = req.load();
        t->ctl[kPcRing + (static_cast<uint32_t>(k) % kPcRingLen)] = static_cast<int32_t>((addr - t->start) / 4096);
        req.store(k + 1);
        pending.push_back(addr);
        posted = true;
      }
    }
    if (posted) FutexShared(&t->ctl[kPcReq], FUTEX_WAKE, INT32_MAX, nullptr);
    if (!pending.empty()) {
      int32_t seen = served.load();
      struct timespec ts = { 0, 2 * 1000 * 1000 };
      FutexShared(&t->ctl[kPcServed], FUTEX_WAIT, seen, &ts);
      for (size_t i = 0; i < pending.size();) {
        if (Resident(pending[i])) {
          WakeRange(t->uffd, pending[i]);
          pending[i] = pending.back();
          pending.pop_back();
        } else {
          i++;
        }
      }
    }
  }
}

void ClosePostcopy(PostcopyTracker* t) {
  if (t->ctl) {
    std::atomic_ref<int32_t>(t->ctl[kPcStop]).store(1);
    FutexShared(&t->ctl[kPcServed], FUTEX_WAKE, INT32_MAX, nullptr);
  }
  if (t->thread.joinable()) t->thread.join();
  if (t->uffd >= 0) close(t->uffd);
  t->uffd = -1;
}

// postcopyTrack(memory: SharedArrayBuffer, ctl: SharedArrayBuffer) -> id
void PostcopyTrack(const FunctionCallbackInfo<Value>& args) {
  Isolate* isolate = args.GetIsolate();
  if (args.Length() < 2 || !args[0]->IsSharedArrayBuffer() || !args[1]->IsSharedArrayBuffer()) { Throw(isolate, "postcopyTrack(memory, control) takes two SharedArrayBuffers", 0); return; }
  Local<SharedArrayBuffer> mem = args[0].As<SharedArrayBuffer>();
  Local<SharedArrayBuffer> ctl = args[1].As<SharedArrayBuffer>();
  if (ctl->ByteLength() < (kPcRing + kPcRingLen) * 4) { Throw(isolate, "postcopyTrack: the control region is too small", 0); return; }
  auto t = std::make_unique<PostcopyTracker>();
  t->mem = mem->GetBackingStore();
  t->ctlStore = ctl->GetBackingStore();
  t->ctl = static_cast<int32_t*>(ctl->Data());
  t->start = reinterpret_cast<uintptr_t>(mem->Data());
  t->length = mem->ByteLength();
  if (t->length == 0 || t->start % 4096 != 0 || t->length % 4096 != 0) { Throw(isolate, "postcopyTrack: the memory is not whole pages", 0); return; }
  t->uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (t->uffd < 0) { Throw(isolate, "userfaultfd", errno); return; }
  struct uffdio_api api;
  std::memset(&api, 0, sizeof api);
  api.api = UFFD_API;
  api.features = UFFD_FEATURE_MISSING_SHMEM;
  if (ioctl(t->uffd, UFFDIO_API, &api) != 0) { int e = errno; close(t->uffd); Throw(isolate, "UFFDIO_API (missing shmem)", e); return; }
  struct uffdio_register reg;
  std::memset(&reg, 0, sizeof reg);
  reg.range.start = t->start;
  reg.range.len = t->length;
  reg.mode = UFFDIO_REGISTER_MODE_MISSING;
  if (ioctl(t->uffd, UFFDIO_REGISTER, &reg) != 0) { int e = errno; close(t->uffd); Throw(isolate, "UFFDIO_REGISTER (missing)", e); return; }
  PostcopyTracker* raw = t.get();
  raw->thread = std::thread(PostcopyLoop, raw);
  int32_t id = nextPcId++;
  pcTrackers[id] = std::move(t);
  args.GetReturnValue().Set(id);
}

// postcopyUntrack(id) -> boolean: stops the thread and closes the userfaultfd (missing pages then
// read as zeros: call it only once every page is there).
void PostcopyUntrack(const FunctionCallbackInfo<Value>& args) {
  if (args.Length() < 1 || !args[0]->IsInt32()) { args.GetReturnValue().Set(false); return; }
  auto it = pcTrackers.find(args[0].As<v8::Int32>()->Value());
  if (it == pcTrackers.end()) { args.GetReturnValue().Set(false); return; }
  ClosePostcopy(it->second.get());
  pcTrackers.erase(it);
  args.GetReturnValue().Set(true);
}

// discardPages(sab, firstPage, count) -> undefined: punches the pages out of the shared file
// (MADV_REMOVE), so the next touch through any mapping of it finds them missing.
void DiscardPages(const FunctionCallbackInfo<Value>& args) {
  Isolate* isolate = args.GetIsolate();
  if (args.Length() < 3 || !args[0]->IsSharedArrayBuffer() || !args[1]->IsUint32() || !args[2]->IsUint32()) { ThrowType(isolate, "discardPages(sab, firstPage, count) takes a SharedArrayBuffer and two whole numbers"); return; }
  Local<SharedArrayBuffer> sab = args[0].As<SharedArrayBuffer>();
  size_t first = args[1].As<v8::Uint32>()->Value();
  size_t count = args[2].As<v8::Uint32>()->Value();
  if ((first + count) * 4096 > sab->ByteLength()) { ThrowRange(isolate, "discardPages: the pages lie outside the buffer"); return; }
  if (count == 0) return;
  if (madvise(static_cast<uint8_t*>(sab->Data()) + first * 4096, count * 4096, MADV_REMOVE) != 0) { Throw(isolate, "madvise(MADV_REMOVE)", errno); return; }
}

// ---- splice pumps: one direction of a TCP proxy, in the kernel ----------------------------------
// A native thread moves bytes from one socket to another through a pipe with splice(2), so the
// bytes never enter the process: what an unimpaired link of the cluster's fabric does with each
// direction of each connection. The sockets stay Node's (their fds are borrowed; Node must not read
// or write them while the pump runs, and must stop the pump before it closes them). The pipe holds
// at most one chunk (its capacity: 1 MiB for root, else 64 KiB past the first few pumps): when stopped, the pump hands what is still in it back to JavaScript,
// which delivers it itself. At the input's end the pump flushes the pipe, shuts the output down for
// writing (the FIN goes on) and stops; on an error it stops. Either way the owning thread's event
// loop calls the callback, and splicePumpStop collects the outcome.

struct SplicePump : JsWatch {
  uv_async_t async;
  pthread_t thread;
  bool threadStarted = false;
  int in = -1;
  int out = -1;
  int pipeR = -1;
  int pipeW = -1;
  int stopFd = -1;
  std::atomic<bool> stop{false};
  // 0 running, 1 ended (input closed, everything delivered, output shut down), 2 failed
  std::atomic<int> state{0};
  std::atomic<int> err{0};
  std::atomic<int64_t> bytes{0};
  std::atomic<int64_t> chunks{0};
  std::atomic<int64_t> read{0};  // bytes taken from the input (read - bytes is what the pipe holds)
  size_t inPipe = 0;  // the thread's; read by others only after join
  size_t pipeCap = 64 * 1024;  // what one splice into the pipe asks for (the pipe's capacity)
  bool bigPipe = false;        // counted in bigPipes (see SplicePumpStart)
  bool closing = false;
};

thread_local std::unordered_map<int32_t, SplicePump*> pumps;
// Pumps of this process whose pipe was made 1 MiB. An unprivileged user's pipes all count against
// one budget (pipe-user-pages-soft, 64 MiB by default), and a user over it gets 8 KiB pipes
// everywhere: without CAP_SYS_RESOURCE only the first few pumps get a big pipe.
std::atomic<int> bigPipes{0};
constexpr int kUnprivilegedBigPipes = 8;
thread_local int32_t nextPumpId = 1;

// Waits until `fd` has `events` (or an error or hang-up, which the next splice reports): 1; the
// pump is asked to stop: 0; poll itself fails: -1 (errno set).
int PumpWait(SplicePump* p, int fd, short events) {
  for (;;) {
    if (p->stop.load()) return 0;
    struct pollfd fds[2] = { { fd, events, 0 }, { p->stopFd, POLLIN, 0 } };
    int r = poll(fds, 2, -1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (fds[1].revents != 0 || p->stop.load()) return 0;
    return 1;
  }
}

void PumpFinish(SplicePump* p, int state, int err) {
  p->err.store(err);
  p->state.store(state);
  uv_async_send(&p->async);
}

void PumpLoop(SplicePump* p);

void* PumpThread(void* arg) {
  PumpLoop(static_cast<SplicePump*>(arg));
  return nullptr;
}

void PumpLoop(SplicePump* p) {
  for (;;) {
    // A stream that never pauses never waits in poll, where a stop is otherwise seen.
    if (p->stop.load()) return;
    if (p->inPipe == 0) {
      // Read first and wait only when nothing is there: a busy stream then costs two splices a
      // chunk, not a poll as well.
      ssize_t n = splice(p->in, nullptr, p->pipeW, nullptr, p->pipeCap, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n == 0) {
        shutdown(p->out, SHUT_WR);
        PumpFinish(p, 1, 0);
        return;
      }
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) {
          int w = PumpWait(p, p->in, POLLIN);
          if (w < 0) PumpFinish(p, 2, errno);
          if (w <= 0) return;
          continue;
        }
        PumpFinish(p, 2, errno);
        return;
      }
      p->inPipe += static_cast<size_t>(n);
      p->chunks.fetch_add(1);
      p->read.fetch_add(n);
    }
    while (p->inPipe > 0) {
      ssize_t m = splice(p->pipeR, nullptr, p->out, nullptr, p->inPipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (m > 0) {
        p->inPipe -= static_cast<size_t>(m);
        p->bytes.fetch_add(m);
        continue;
      }
      if (m < 0 && (errno == EAGAIN || errno == EINTR)) {
        int w = PumpWait(p, p->out, POLLOUT);
        if (w < 0) PumpFinish(p, 2, errno);
        if (w <= 0) return;
        continue;
      }
      PumpFinish(p, 2, m < 0 ? errno : EPIPE);
      return;
    }
  }
}

void OnPumpClosed(uv_handle_t* h) {
  ReleaseJs(static_cast<SplicePump*>(h->data));
}

// Stops and joins the thread, and closes the pipe and the handle; `leftover` (may be null) gets
// the bytes still in the pipe.
void ClosePump(SplicePump* p, std::vector<char>* leftover) {
  pumps.erase(p->id);
  p->stop.store(true);
  if (p->stopFd >= 0) {
    uint64_t one = 1;
    ssize_t w = write(p->stopFd, &one, sizeof one);
    (void)w;
  }
  if (p->threadStarted) {
    pthread_join(p->thread, nullptr);
    p->threadStarted = false;
  }
  if (leftover != nullptr && p->inPipe > 0) {
    leftover->resize(p->inPipe);
    size_t got = 0;
    while (got < p->inPipe) {
      ssize_t r = read(p->pipeR, leftover->data() + got, p->inPipe - got);
      if (r <= 0) break;
      got += static_cast<size_t>(r);
    }
    leftover->resize(got);
  }
  for (int* fd : { &p->pipeR, &p->pipeW, &p->stopFd, &p->in, &p->out }) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
  if (p->bigPipe) {
    p->bigPipe = false;
    bigPipes.fetch_sub(1);
  }
  if (!p->closing) {
    p->closing = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&p->async), OnPumpClosed);
  }
}

void ClosePumpForCleanup(SplicePump* p) {
  ClosePump(p, nullptr);
}

void OnPumpDone(uv_async_t* h) {
  SplicePump* p = static_cast<SplicePump*>(h->data);
  if (!p->stop.load()) CallJs(p);
}

bool FdIsSocket(int fd) {
  struct stat st;
  return fd >= 0 && fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
}

// splicePump(inFd, outFd, onDone) -> id: starts moving bytes from socket inFd to socket outFd.
void SplicePumpStart(const FunctionCallbackInfo<Value>& args) {
  Isolate* isolate = args.GetIsolate();
  if (args.Length() < 3 || !args[0]->IsInt32() || !args[1]->IsInt32() || !args[2]->IsFunction()) {
    Throw(isolate, "splicePump(inFd, outFd, onDone) takes two file descriptors and a function", 0); return;
  }
  int in = args[0].As<v8::Int32>()->Value();
  int out = args[1].As<v8::Int32>()->Value();
  if (!FdIsSocket(in) || !FdIsSocket(out) || in == out) { Throw(isolate, "splicePump: both ends must be two different open sockets", 0); return; }
  uv_loop_t* loop = node::GetCurrentEventLoop(isolate);
  if (loop == nullptr) { Throw(isolate, "splicePump: no event loop in this thread", 0); return; }
  // The pump works on its own duplicates of the two fds: whatever the owner does with its fds, the
  // pump's stay the same sockets until it stops (never a number reused for another file). Both
  // are made non-blocking (the flag is shared with the owner's fds; Node's are already).
  int din = fcntl(in, F_DUPFD_CLOEXEC, 3);
  if (din < 0) { Throw(isolate, "splicePump: dup", errno); return; }
  int dout = fcntl(out, F_DUPFD_CLOEXEC, 3);
  if (dout < 0) { int e = errno; close(din); Throw(isolate, "splicePump: dup", e); return; }
  for (int fd : { din, dout }) {
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && (fl & O_NONBLOCK) == 0) fcntl(fd, F_SETFL, fl | O_NONBLOCK);
  }
  int pp[2];
  if (pipe2(pp, O_NONBLOCK | O_CLOEXEC) != 0) { int e = errno; close(din); close(dout); Throw(isolate, "splicePump: pipe2", e); return; }
  // A larger pipe moves a busy stream in fewer, larger chunks (each chunk is two splices and, when
  // the input runs dry, a poll): 1 MiB, the default pipe-max-size, for root (whose pipes no budget
  // limits) or for the first kUnprivilegedBigPipes pumps of another user; otherwise, or where the
  // system refuses, the pipe stays as made (64 KiB unless the user is over its budget already).
  int cap = -1;
  bool counted = false;
  if (geteuid() == 0) {
    cap = fcntl(pp[1], F_SETPIPE_SZ, 1024 * 1024);
  } else if (bigPipes.fetch_add(1) < kUnprivilegedBigPipes) {
    cap = fcntl(pp[1], F_SETPIPE_SZ, 1024 * 1024);
    counted = cap > 0;
    if (!counted) bigPipes.fetch_sub(1);
  } else {
    bigPipes.fetch_sub(1);
  }
  if (cap < 0) cap = fcntl(pp[1], F_GETPIPE_SZ);
  int efd = static_cast<int>(syscall(SYS_eventfd2, 0, O_NONBLOCK | O_CLOEXEC));
  if (efd < 0) {
    int e = errno;
    close(pp[0]); close(pp[1]); close(din); close(dout);
    if (counted) bigPipes.fetch_sub(1);
    Throw(isolate, "splicePump: eventfd", e); return;
  }
  SplicePump* p = new SplicePump();
  if (cap > 0) p->pipeCap = static_cast<size_t>(cap);
  p->bigPipe = counted;
  p->in = din;
  p->out = dout;
  p->pipeR = pp[0];
  p->pipeW = pp[1];
  p->stopFd = efd;
  int r = uv_async_init(loop, &p->async, OnPumpDone);
  if (r != 0) {
    close(pp[0]); close(pp[1]); close(efd); close(din); close(dout);
    if (counted) bigPipes.fetch_sub(1);
    delete p;
    Throw(isolate, std::string("uv_async_init: ") + uv_strerror(r), 0); return;
  }
  p->async.data = p;
  uv_unref(reinterpret_cast<uv_handle_t*>(&p->async));
  BindJs(p, isolate, args[2].As<v8::Function>(), nextPumpId);
  r = StartSmallThread(&p->thread, PumpThread, p);
  if (r != 0) {
    ClosePump(p, nullptr);
    Throw(isolate, "splicePump: pthread_create", r); return;
  }
  p->threadStarted = true;
  p->cleanup = node::AddEnvironmentCleanupHook(isolate, JsWatchCleanupHook<SplicePump, ClosePumpForCleanup>, p);
  pumps[p->id] = p;
  args.GetReturnValue().Set(v8::Integer::New(isolate, p->id));
}

Local<Object> PumpReport(Isolate* isolate, SplicePump* p, const std::vector<char>* leftover) {
  Local<v8::Context> ctx = isolate->GetCurrentContext();
  Local<Object> o = Object::New(isolate);
  int st = p->state.load();
  const char* name = st == 0 ? "running" : st == 1 ? "ended" : "failed";
  o->Set(ctx, String::NewFromUtf8(isolate, "state").ToLocalChecked(), String::NewFromUtf8(isolate, name).ToLocalChecked()).Check();
  o->Set(ctx, String::NewFromUtf8(isolate, "errno").ToLocalChecked(), v8::Integer::New(isolate, p->err.load())).Check();
  o->Set(ctx, String::NewFromUtf8(isolate, "bytes").ToLocalChecked(), v8::Number::New(isolate, static_cast<double>(p->bytes.load()))).Check();
  o->Set(ctx, String::NewFromUtf8(isolate, "chunks").ToLocalChecked(), v8::Number::New(isolate, static_cast<double>(p->chunks.load()))).Check();
  o->Set(ctx, String::NewFromUtf8(isolate, "read").ToLocalChecked(), v8::Number::New(isolate, static_cast<double>(p->read.load()))).Check();
  if (leftover != nullptr) {
    Local<v8::ArrayBuffer> ab = v8::ArrayBuffer::New(isolate, leftover->size());
    if (!leftover->empty()) std::memcpy(ab->Data(), leftover->data(), leftover->size());
    o->Set(ctx, String::NewFromUtf8(isolate, "leftover").ToLocalChecked(), v8::Uint8Array::New(ab, 0, leftover->size())).Check();
  }
  return o;
}

// splicePumpStats(id) -> { state, errno, bytes, chunks, read } or null.
void SplicePumpStats(const FunctionCallbackInfo<Value>& args) {
  if (args.Length() < 1 || !args[0]->IsInt32()) { args.GetReturnValue().SetNull(); return; }
  auto it = pumps.find(args[0].As<v8::Int32>()->Value());
  if (it == pumps.end()) { args.GetReturnValue().SetNull(); return; }
  args.GetReturnValue().Set(PumpReport(args.GetIsolate(), it->second, nullptr));
}

// splicePumpStop(id) -> { state, errno, bytes, chunks, read, leftover } or null: the pump no longer
// touches either socket when this returns.
void SplicePumpStop(const FunctionCallbackInfo<Value>& args) {
  if (args.Length() < 1 || !args[0]->IsInt32()) { args.GetReturnValue().SetNull(); return; }
  auto it = pumps.find(args[0].As<v8::Int32>()->Value());
  if (it == pumps.end()) { args.GetReturnValue().SetNull(); return; }
  SplicePump* p = it->second;
  std::vector<char> leftover;
  ClosePump(p, &leftover);
  // The pump is freed by its handle's close callback, which runs on a later turn of the loop.
  Local<Object> report = PumpReport(args.GetIsolate(), p, &leftover);
  args.GetReturnValue().Set(report);
}

}  // namespace


NODE_MODULE_INIT(/* exports, module, context */) {
  Isolate* isolate = context->GetIsolate();
  exports->Set(context, String::NewFromUtf8(isolate, "map").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, Map)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "unlink").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, Unlink)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "futexWait").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, FutexWait)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "futexWake").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, FutexWake)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "yieldCpu").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, YieldCpu)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "setChildSubreaper").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, SetChildSubreaper)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "reapChild").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, ReapChild)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "watchPid").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, WatchPid)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "unwatchPid").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, UnwatchPid)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "watchWord").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, WatchWord)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "unwatchWord").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, UnwatchWord)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "copyBytes").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, CopyBytes)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "zeroPages").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, ZeroPages)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "postcopyTrack").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, PostcopyTrack)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "postcopyUntrack").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, PostcopyUntrack)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "discardPages").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, DiscardPages)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "wpTrack").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, WpTrack)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "wpHarvest").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, WpHarvest)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "wpUntrack").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, WpUntrack)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "splicePump").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, SplicePumpStart)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "splicePumpStats").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, SplicePumpStats)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "splicePumpStop").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, SplicePumpStop)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "wakeFdOpen").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, WakeFdOpen)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "wakeFdSignal").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, WakeFdSignal)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "wakeFdClose").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, WakeFdClose)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "watchWakeFd").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, WatchWakeFd)->GetFunction(context).ToLocalChecked()).Check();
  exports->Set(context, String::NewFromUtf8(isolate, "unwatchWakeFd").ToLocalChecked(),
               v8::FunctionTemplate::New(isolate, UnwatchWakeFd)->GetFunction(context).ToLocalChecked()).Check();
}
