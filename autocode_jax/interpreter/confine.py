"""Kernel confinement for one execution: Landlock (filesystem writes, TCP, signals), a seccomp
filter refusing non-Unix sockets, and the netns / privilege helpers. Standard library + ctypes.

Everything here is applied in the forked child just before user code runs, or once in the
server process (the network namespace), and never in the trainer.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
PR_SET_CHILD_SUBREAPER = 36
SECCOMP_MODE_FILTER = 2
CLONE_NEWNET = 0x40000000

# Landlock syscalls are numbered alike on x86-64 and arm64.
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
# Filesystem rights that change something; reads and execution stay allowed everywhere.
_FS_WRITE = {1: (1 << 1) | (1 << 4) | (1 << 5) | sum(1 << b for b in range(6, 13)),
             2: 1 << 13,   # REFER
             3: 1 << 14}   # TRUNCATE
_FS_WRITE_FILE, _FS_TRUNCATE = 1 << 1, 1 << 14
_NET_BIND_TCP, _NET_CONNECT_TCP = 1, 2
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1, 2


class ConfinementError(OSError):
  pass


def _check(ret: int, what: str) -> int:
  if ret < 0:
    err = ctypes.get_errno()
    raise ConfinementError(err, f"{what}: {os.strerror(err)}")
  return ret


def prctl(option: int, arg: int = 0) -> None:
  _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl({option})")


def landlock_abi() -> int:
  """The kernel's Landlock ABI version, 0 where Landlock is unavailable."""
  ret = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
  return max(int(ret), 0)


def unshare_network() -> bool:
  """Moves this process into a fresh network namespace (only a downed loopback); needs root."""
  return _libc.unshare(CLONE_NEWNET) == 0


def landlock_restrict(writable_dir: str, abi: int) -> list[str]:
  """Confines this process: writes only beneath writable_dir (and to /dev/null); from ABI 4 no
  TCP bind/connect; from ABI 6 no signals to processes outside and no abstract Unix sockets.
  Returns what was applied. Requires no_new_privs (set here)."""
  fs = sum(bits for v, bits in _FS_WRITE.items() if abi >= v)
  fields = [fs]
  applied = ["fs-write"]
  if abi >= 4:
    fields.append(_NET_BIND_TCP | _NET_CONNECT_TCP)
    applied.append("tcp")
  if abi >= 6:
    fields.append(_SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL)
    applied.append("signals")
  attr = struct.pack(f"<{len(fields)}Q", *fields)
  fd = _check(_libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, attr, len(attr), 0),
              "landlock_create_ruleset")
  try:
    for path, rights in ((writable_dir, fs), ("/dev/null", fs & (_FS_WRITE_FILE | _FS_TRUNCATE))):
      pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
      try:
        rule = struct.pack("<Qi", rights, pfd)  # struct landlock_path_beneath_attr, packed
        _check(_libc.syscall(_SYS_LANDLOCK_ADD_RULE, fd, _LANDLOCK_RULE_PATH_BENEATH, rule, 0),
               f"landlock_add_rule({path})")
      finally:
        os.close(pfd)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    _check(_libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, fd, 0), "landlock_restrict_self")
  finally:
    os.close(fd)
  return applied


# seccomp: refuse socket(2) for every family but AF_UNIX, with EACCES.
_ARCH = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}


def seccomp_supported() -> bool:
  return platform.machine() in _ARCH


def seccomp_deny_sockets() -> None:
  audit_arch, nr_socket = _ARCH[platform.machine()]
  ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
  allow, deny = 0x7FFF0000, 0x00050000 | 13  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EACCES
  prog = [
      (ld, 0, 0, 4),                # 0: A = arch
      (jeq, 0, 5, audit_arch),      # 1: another arch (compat syscalls) -> deny
      (ld, 0, 0, 0),                # 2: A = syscall nr
      (jge, 3, 0, 0x40000000),      # 3: x32 syscall numbers -> deny
      (jeq, 0, 3, nr_socket),       # 4: not socket() -> allow
      (ld, 0, 0, 16),               # 5: A = args[0] (domain), low 32 bits
      (jeq, 1, 0, 1),               # 6: AF_UNIX -> allow
      (ret, 0, 0, deny),            # 7
      (ret, 0, 0, allow),           # 8
  ]
  buf = b"".join(struct.pack("<HBBI", *ins) for ins in prog)
  filt = ctypes.create_string_buffer(buf, len(buf))

  class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

  fprog = SockFprog(len(prog), ctypes.cast(filt, ctypes.c_void_p))
  prctl(PR_SET_NO_NEW_PRIVS, 1)
  _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0),
         "seccomp")
