/* seccomp_probe: make the system calls Docker's default seccomp profile refuses, and some
 * ordinary ones, and print one line per call: "<name> <errno name>", or "<name> OK" when the
 * call succeeded, or "<name> SIG<n>" when it killed the process.
 *
 * Built static by the tests (gcc -static -O2) so that it runs in any root. Every call runs
 * in a child of its own (a fork), so that one that succeeds changes nothing for the next.
 *
 * Harmless by design, also where no filter stops a call and the caller is root: every call
 * has an argument the kernel rejects after its permission check (a bad flag, magic number,
 * fd or pointer), or one that only reads, or it changes nothing but the child making it.
 * Usage: seccomp_probe [name...]   (no names: all of them)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/personality.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Calls newer than this libc's headers: the numbers from 424 on are the same on every
 * architecture that has them (x86_64, aarch64, ...). */
#ifndef SYS_statmount
#define SYS_statmount 457
#endif
#ifndef SYS_listmount
#define SYS_listmount 458
#endif
#ifndef SYS_lsm_get_self_attr
#define SYS_lsm_get_self_attr 459
#endif
#ifndef SYS_lsm_list_modules
#define SYS_lsm_list_modules 461
#endif
#ifndef SYS_mseal
#define SYS_mseal 462
#endif
#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif

extern char **environ;
static const char *self_path = "/proc/self/exe";

#define BAD_FLAGS (~0U)
#define BADPTR ((void *) 1)

/* --- calls Docker's profile refuses (with its default capabilities) --- */
static long p_unshare (void) { return unshare (CLONE_NEWUSER); }
static long p_clone_newuser (void)
{
  /* fork-like clone (no new stack) asking for a new user namespace */
  long pid = syscall (SYS_clone, CLONE_NEWUSER | SIGCHLD, NULL, NULL, NULL, NULL);
  if (pid == 0)
    _exit (0);
  if (pid > 0)
    waitpid ((pid_t) pid, NULL, 0);
  return pid < 0 ? -1 : 0;
}
static long p_clone3 (void) { return syscall (SYS_clone3, NULL, 0); }            /* size 0: EINVAL */
static long p_setns (void) { return syscall (SYS_setns, -1, 0); }                /* EBADF */
static long p_mount (void) { return syscall (SYS_mount, NULL, NULL, NULL, 0, NULL); } /* EFAULT */
static long p_umount2 (void) { return syscall (SYS_umount2, "/nonexistent-nsmagic", BAD_FLAGS); }
#ifdef SYS_umount
static long p_umount (void) { return syscall (SYS_umount, NULL); }
#endif
static long p_pivot_root (void) { return syscall (SYS_pivot_root, NULL, NULL); }
static long p_open_tree (void) { return syscall (SYS_open_tree, -1, "", BAD_FLAGS); }
static long p_move_mount (void) { return syscall (SYS_move_mount, -1, NULL, -1, NULL, BAD_FLAGS); }
static long p_fsopen (void) { return syscall (SYS_fsopen, NULL, BAD_FLAGS); }
static long p_fsmount (void) { return syscall (SYS_fsmount, -1, BAD_FLAGS, 0); }
static long p_fspick (void) { return syscall (SYS_fspick, -1, NULL, BAD_FLAGS); }
static long p_fsconfig (void) { return syscall (SYS_fsconfig, -1, 0xffff, NULL, NULL, 0); }
static long p_mount_setattr (void) { return syscall (SYS_mount_setattr, -1, NULL, BAD_FLAGS, NULL, 0); }
static long p_swapon (void) { return syscall (SYS_swapon, NULL, BAD_FLAGS); }   /* EINVAL */
static long p_swapoff (void) { return syscall (SYS_swapoff, NULL); }            /* EFAULT */
static long p_reboot (void) { return syscall (SYS_reboot, 0, 0, 0, NULL); }     /* bad magic */
static long p_init_module (void) { return syscall (SYS_init_module, NULL, 0, ""); } /* ENOEXEC */
static long p_finit_module (void) { return syscall (SYS_finit_module, -1, "", 0); }
static long p_delete_module (void)
{
  return syscall (SYS_delete_module, "nsmagic_no_such_module", O_NONBLOCK);   /* ENOENT */
}
#ifdef SYS_kexec_load
static long p_kexec_load (void) { return syscall (SYS_kexec_load, 0, 0, NULL, ~0UL); }
#endif
#ifdef SYS_kexec_file_load
static long p_kexec_file_load (void) { return syscall (SYS_kexec_file_load, -1, -1, 0, NULL, ~0UL); }
#endif
static long p_bpf (void) { return syscall (SYS_bpf, 0x7fffffff, NULL, 0); }    /* no such cmd */
static long p_perf_event_open (void) { return syscall (SYS_perf_event_open, NULL, 0, -1, -1, 0); }
static long p_keyctl (void) { return syscall (SYS_keyctl, 0x7fffffff, 0, 0, 0, 0); } /* no such op */
static long p_add_key (void) { return syscall (SYS_add_key, NULL, NULL, NULL, 0, 0); }
static long p_request_key (void) { return syscall (SYS_request_key, NULL, NULL, NULL, 0); }
static long p_userfaultfd (void) { return syscall (SYS_userfaultfd, BAD_FLAGS); }
static long p_personality_refused (void) { return personality (PER_LINUX | ADDR_NO_RANDOMIZE); }
static long p_open_by_handle_at (void) { return syscall (SYS_open_by_handle_at, -1, NULL, 0); }
static long p_move_pages (void) { return syscall (SYS_move_pages, 0, 0, NULL, NULL, NULL, 0); }
static long p_migrate_pages (void) { return syscall (SYS_migrate_pages, 0, 0, NULL, NULL); }
static long p_get_mempolicy (void) { return syscall (SYS_get_mempolicy, NULL, NULL, 0, NULL, 0); }
static long p_mbind (void) { return syscall (SYS_mbind, NULL, 0, 0, NULL, 0, 0); }
static long p_kcmp (void) { return syscall (SYS_kcmp, getpid (), getpid (), 1 /* KCMP_VM */, 0, 0); }
static long p_pidfd_getfd (void) { return syscall (SYS_pidfd_getfd, -1, 0, 0); }
static long p_process_madvise (void) { return syscall (SYS_process_madvise, -1, NULL, 0, 0, 0); }
static long p_fanotify_init (void) { return syscall (SYS_fanotify_init, BAD_FLAGS, 0); }
static long p_acct (void) { return syscall (SYS_acct, BADPTR); }                 /* EFAULT */
static long p_quotactl (void) { return syscall (SYS_quotactl, -1, NULL, 0, NULL); }
static long p_quotactl_fd (void) { return syscall (SYS_quotactl_fd, -1, 0, 0, NULL); }
static long p_syslog (void) { return syscall (SYS_syslog, 10 /* SIZE_BUFFER */, NULL, 0); }
#ifdef SYS_lookup_dcookie
static long p_lookup_dcookie (void) { return syscall (SYS_lookup_dcookie, 0, NULL, 0); }
#endif
#ifdef SYS_iopl
static long p_iopl (void) { return syscall (SYS_iopl, 4); }                      /* level > 3 */
#endif
#ifdef SYS_ioperm
static long p_ioperm (void) { return syscall (SYS_ioperm, 0, 0, 0); }            /* no ports */
#endif
#ifdef SYS_vm86old
static long p_vm86old (void) { return syscall (SYS_vm86old, NULL); }
#endif
#ifdef SYS_vm86
static long p_vm86 (void) { return syscall (SYS_vm86, 0xffff, NULL); }
#endif
static long p_clock_settime (void) { return syscall (SYS_clock_settime, CLOCK_REALTIME, NULL); }
static long p_settimeofday (void) { return syscall (SYS_settimeofday, BADPTR, NULL); }
#ifdef SYS_stime
static long p_stime (void) { return syscall (SYS_stime, NULL); }
#endif
static long p_sethostname (void) { return syscall (SYS_sethostname, NULL, -1); }   /* EINVAL */
static long p_setdomainname (void) { return syscall (SYS_setdomainname, NULL, -1); }
static long p_vhangup (void)
{
  if (setsid () < 0)   /* no controlling terminal: nothing to hang up */
    return -1;
  return syscall (SYS_vhangup);
}
static long p_io_uring_setup (void) { return syscall (SYS_io_uring_setup, 0, NULL); }
static long p_io_uring_enter (void) { return syscall (SYS_io_uring_enter, -1, 0, 0, 0, NULL, 0); }
static long p_io_uring_register (void) { return syscall (SYS_io_uring_register, -1, 0, NULL, 0); }
static long p_socket_vsock (void) { return socket (AF_VSOCK, 11 /* > SOCK_PACKET */, 0); }
#ifdef SYS_uselib
static long p_uselib (void) { return syscall (SYS_uselib, NULL); }
#endif
#ifdef SYS_ustat
static long p_ustat (void) { return syscall (SYS_ustat, 0, NULL); }
#endif
#ifdef SYS_sysfs
static long p_sysfs (void) { return syscall (SYS_sysfs, 3); }                   /* count only */
#endif
static long p_lsm_get_self_attr (void) { return syscall (SYS_lsm_get_self_attr, 0, NULL, NULL, 0); }
static long p_lsm_list_modules (void) { return syscall (SYS_lsm_list_modules, NULL, NULL, 0); }

/* --- calls the profile allows: a filter must not break these --- */
static long p_getpid (void) { return getpid () > 0 ? 0 : -1; }
static long p_write (void)
{
  int fds[2];
  if (pipe (fds) < 0)
    return -1;
  return write (fds[1], "x", 1) == 1 ? 0 : -1;
}
static long p_read (void)
{
  int fds[2];
  char c;
  if (pipe (fds) < 0 || write (fds[1], "x", 1) != 1)
    return -1;
  return read (fds[0], &c, 1) == 1 ? 0 : -1;
}
static long p_openat (void) { return syscall (SYS_openat, AT_FDCWD, "/", O_RDONLY | O_DIRECTORY); }
static long p_mmap (void)
{
  void *p = mmap (NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    return -1;
  ((char *) p)[0] = 1;
  return munmap (p, 65536);
}
static long p_clock_gettime (void)
{
  struct timespec ts;
  return clock_gettime (CLOCK_MONOTONIC, &ts);
}
static long p_fork (void)   /* glibc: clone without namespace flags */
{
  int status;
  pid_t pid = fork ();
  if (pid == 0)
    _exit (7);
  if (pid < 0 || waitpid (pid, &status, 0) != pid)
    return -1;
  return WIFEXITED (status) && WEXITSTATUS (status) == 7 ? 0 : (errno = ECHILD, -1);
}
static long p_posix_spawn (void)   /* glibc 2.34+: clone3 first, clone on ENOSYS */
{
  char *argv[] = { (char *) "seccomp_probe", (char *) "--noop", NULL };
  int status, rc;
  pid_t pid;
  rc = posix_spawn (&pid, self_path, NULL, NULL, argv, environ);
  if (rc != 0)
    return errno = rc, -1;
  if (waitpid (pid, &status, 0) != pid)
    return -1;
  return WIFEXITED (status) && WEXITSTATUS (status) == 0 ? 0 : (errno = ECHILD, -1);
}
static void *thread_main (void *arg) { return arg; }
static long p_pthread_create (void)   /* glibc 2.34+: clone3 first, clone on ENOSYS */
{
  pthread_t t;
  int rc = pthread_create (&t, NULL, thread_main, NULL);
  if (rc != 0)
    return errno = rc, -1;
  return pthread_join (t, NULL) == 0 ? 0 : -1;
}
static long p_socket_inet (void) { return socket (AF_INET, SOCK_DGRAM, 0); }
static long p_personality_query (void) { return personality (0xffffffff); }
static long p_chroot (void) { return chroot ("/"); }   /* CAP_SYS_CHROOT is in Docker's set */
static long p_name_to_handle_at (void)   /* allowed since moby 2023: EOVERFLOW (0 bytes) */
{
  struct { unsigned int bytes; int type; } handle = { 0, 0 };
  int mount_id;
  return syscall (SYS_name_to_handle_at, AT_FDCWD, "/", &handle, &mount_id, 0);
}
static long p_process_vm_readv (void)   /* allowed on kernels >= 4.8 */
{
  return syscall (SYS_process_vm_readv, getpid (), NULL, 0, NULL, 0, 0);
}
/* Allowed by Docker's profile, but newer than some libseccomp (2.5.4): then refused. */
static long p_mseal (void) { return syscall (SYS_mseal, 0, 0, 0); }
static long p_statmount (void) { return syscall (SYS_statmount, NULL, NULL, 0, 0); }
static long p_listmount (void) { return syscall (SYS_listmount, NULL, NULL, 0, 0); }

struct probe { const char *name; long (*call) (void); };

static const struct probe probes[] = {
  { "unshare", p_unshare },
  { "clone:newuser", p_clone_newuser },
  { "clone3", p_clone3 },
  { "setns", p_setns },
  { "mount", p_mount },
  { "umount2", p_umount2 },
#ifdef SYS_umount
  { "umount", p_umount },
#endif
  { "pivot_root", p_pivot_root },
  { "open_tree", p_open_tree },
  { "move_mount", p_move_mount },
  { "fsopen", p_fsopen },
  { "fsmount", p_fsmount },
  { "fspick", p_fspick },
  { "fsconfig", p_fsconfig },
  { "mount_setattr", p_mount_setattr },
  { "swapon", p_swapon },
  { "swapoff", p_swapoff },
  { "reboot", p_reboot },
  { "init_module", p_init_module },
  { "finit_module", p_finit_module },
  { "delete_module", p_delete_module },
#ifdef SYS_kexec_load
  { "kexec_load", p_kexec_load },
#endif
#ifdef SYS_kexec_file_load
  { "kexec_file_load", p_kexec_file_load },
#endif
  { "bpf", p_bpf },
  { "perf_event_open", p_perf_event_open },
  { "keyctl", p_keyctl },
  { "add_key", p_add_key },
  { "request_key", p_request_key },
  { "userfaultfd", p_userfaultfd },
  { "personality:refused", p_personality_refused },
  { "open_by_handle_at", p_open_by_handle_at },
  { "move_pages", p_move_pages },
  { "migrate_pages", p_migrate_pages },
  { "get_mempolicy", p_get_mempolicy },
  { "mbind", p_mbind },
  { "kcmp", p_kcmp },
  { "pidfd_getfd", p_pidfd_getfd },
  { "process_madvise", p_process_madvise },
  { "fanotify_init", p_fanotify_init },
  { "acct", p_acct },
  { "quotactl", p_quotactl },
  { "quotactl_fd", p_quotactl_fd },
  { "syslog", p_syslog },
#ifdef SYS_lookup_dcookie
  { "lookup_dcookie", p_lookup_dcookie },
#endif
#ifdef SYS_iopl
  { "iopl", p_iopl },
#endif
#ifdef SYS_ioperm
  { "ioperm", p_ioperm },
#endif
#ifdef SYS_vm86old
  { "vm86old", p_vm86old },
#endif
#ifdef SYS_vm86
  { "vm86", p_vm86 },
#endif
  { "clock_settime", p_clock_settime },
  { "settimeofday", p_settimeofday },
#ifdef SYS_stime
  { "stime", p_stime },
#endif
  { "sethostname", p_sethostname },
  { "setdomainname", p_setdomainname },
  { "vhangup", p_vhangup },
  { "io_uring_setup", p_io_uring_setup },
  { "io_uring_enter", p_io_uring_enter },
  { "io_uring_register", p_io_uring_register },
  { "socket:vsock", p_socket_vsock },
#ifdef SYS_uselib
  { "uselib", p_uselib },
#endif
#ifdef SYS_ustat
  { "ustat", p_ustat },
#endif
#ifdef SYS_sysfs
  { "sysfs", p_sysfs },
#endif
  { "lsm_get_self_attr", p_lsm_get_self_attr },
  { "lsm_list_modules", p_lsm_list_modules },
  /* allowed */
  { "getpid", p_getpid },
  { "write", p_write },
  { "read", p_read },
  { "openat", p_openat },
  { "mmap", p_mmap },
  { "clock_gettime", p_clock_gettime },
  { "fork", p_fork },
  { "posix_spawn", p_posix_spawn },
  { "pthread_create", p_pthread_create },
  { "socket:inet", p_socket_inet },
  { "personality:query", p_personality_query },
  { "chroot", p_chroot },
  { "name_to_handle_at", p_name_to_handle_at },
  { "process_vm_readv", p_process_vm_readv },
  { "mseal", p_mseal },
  { "statmount", p_statmount },
  { "listmount", p_listmount },
};

static int wanted (const char *name, int argc, char **argv)
{
  if (argc < 2)
    return 1;
  for (int i = 1; i < argc; i++)
    if (strcmp (argv[i], name) == 0)
      return 1;
  return 0;
}

int main (int argc, char **argv)
{
  if (argc == 2 && strcmp (argv[1], "--noop") == 0)
    return 0;
  setvbuf (stdout, NULL, _IOLBF, 0);
  for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++)
    {
      int status;
      pid_t pid;
      if (!wanted (probes[i].name, argc, argv))
        continue;
      pid = fork ();
      if (pid < 0)
        {
          perror ("seccomp_probe: fork");
          return 125;
        }
      if (pid == 0)
        {
          errno = 0;
          long ret = probes[i].call ();
          _exit (ret < 0 ? (errno ? errno : 255) : 0);
        }
      if (waitpid (pid, &status, 0) != pid)
        {
          perror ("seccomp_probe: waitpid");
          return 125;
        }
      if (WIFSIGNALED (status))
        printf ("%s SIG%d\n", probes[i].name, WTERMSIG (status));
      else if (WEXITSTATUS (status) == 0)
        printf ("%s OK\n", probes[i].name);
      else
        {
          const char *e = strerrorname_np (WEXITSTATUS (status));
          if (e)
            printf ("%s %s\n", probes[i].name, e);
          else
            printf ("%s E%d\n", probes[i].name, WEXITSTATUS (status));
        }
    }
  return 0;
}
