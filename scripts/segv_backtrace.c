// LD_PRELOAD helper: on SIGSEGV / SIGABRT print the native stack (library + offset of each frame) to stderr, then
// die as before. For a crash where the device has no gdb (the ValueError from _C, bench/NOTES.md); the offsets
// are then named with addr2line by scripts/probe_valueerror.sh.
//   gcc -shared -fPIC -O1 -o /tmp/segv_backtrace.so scripts/segv_backtrace.c -ldl
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void on_fault(int sig, siginfo_t *info, void *ctx) {
  (void)ctx;
  void *frames[64];
  int n = backtrace(frames, 64);
  char line[512];
  int len = snprintf(line, sizeof line, "\n=== signal %d at address %p, %d frames ===\n", sig, info->si_addr, n);
  write(2, line, len);
  for (int i = 0; i < n; ++i) {
    Dl_info d;
    if (dladdr(frames[i], &d) && d.dli_fname) {
      len = snprintf(line, sizeof line, "FRAME %2d %s +0x%lx %s\n", i, d.dli_fname,
                     (unsigned long)((char *)frames[i] - (char *)d.dli_fbase), d.dli_sname ? d.dli_sname : "?");
    } else {
      len = snprintf(line, sizeof line, "FRAME %2d %p\n", i, frames[i]);
    }
    write(2, line, len);
  }
  signal(sig, SIG_DFL);  // die with the original signal
  raise(sig);
}

__attribute__((constructor)) static void install(void) {
  void *warm[1];
  backtrace(warm, 1);  // loads libgcc's unwinder now, not inside the handler
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigaction(SIGSEGV, &sa, NULL);
  sigaction(SIGABRT, &sa, NULL);
}
