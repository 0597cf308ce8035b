/**
 * The one module that calls the C library through `Deno.dlopen`: every
 * binding, constant and struct layout the balancer uses lives here, so the
 * sharp edges of FFI are in one place.
 *
 * It holds three things.
 *
 * **Switching off `SIGUSR1`.** Deno (since 2.9.2), like
 * Node, starts V8's inspector on 127.0.0.1:9229 when the process gets
 * `SIGUSR1`, whether or not the program listens for that signal. Any local
 * user can then attach a debugger and run code inside the balancer with all
 * of its permissions. Deno has no flag to turn that off, so the balancer sets
 * the signal's disposition to "ignore" itself.
 *
 * **Resetting a connection** Deno opened. Deno can close a socket only
 * cleanly (FIN), so a backend's reset would reach the client as a clean end,
 * and a truncated answer would look complete. {@linkcode resetConnection}
 * finds the socket's descriptor (by its two addresses) and disconnects it
 * with `connect(fd, AF_UNSPEC)`, which makes Linux send a reset (RST) and
 * leaves the descriptor for Deno to close as usual.
 *
 * **The epoll engine's system calls** (engine_epoll.ts, and
 * engine_epoll_udp.ts for UDP): sockets, epoll, eventfd, `recvmmsg` and
 * `sendmmsg`, `errno`, and the struct layouts they take. Conventions, for
 * speed and safety: every result is an `i32` (a 64-bit result would come
 * back as a BigInt, an allocation); a failed call returns `-errno`; every
 * pointer handed to libc comes from a buffer allocated once and kept
 * referenced by its owner; lengths are passed as `u32` (see `read`).
 *
 * Needs `--allow-ffi` (Linux only); without it the callers warn, or close
 * cleanly, instead.
 *
 * @module
 */

/** `SIGUSR1` on Linux (x86_64 and aarch64 alike). */
export const SIGUSR1 = 10;
/** `SIG_IGN`, the "ignore this signal" disposition, as a pointer value. */
export const SIG_IGN = 1n;
/** `SIG_DFL`, the default disposition. */
export const SIG_DFL = 0n;

/** `AF_UNSPEC`, `AF_INET` and `AF_INET6` on Linux. */
export const AF_UNSPEC = 0;
export const AF_INET = 2;
export const AF_INET6 = 10;
/** `F_GETFD`: a cheap question that fails with `EBADF` on a closed descriptor. */
export const F_GETFD = 1;
/** Bytes of `struct sockaddr_in` and `struct sockaddr_in6`. */
export const SOCKADDR_IN_BYTES = 16;
export const SOCKADDR_IN6_BYTES = 28;

// Socket and epoll constants (Linux, x86_64 and aarch64 alike).
export const SOCK_STREAM = 1;
export const SOCK_DGRAM = 2;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
export const SO_REUSEADDR = 2;
export const SO_ERROR = 4;
export const SO_LINGER = 13;
export const SO_REUSEPORT = 15;
export const IPPROTO_TCP = 6;
export const TCP_NODELAY = 1;
export const SHUT_WR = 1;
export const EPOLLIN = 0x001;
export const EPOLLOUT = 0x004;
export const EPOLLERR = 0x008;
export const EPOLLHUP = 0x010;
export const EPOLLRDHUP = 0x2000;
/**
 * `send` flag: more follows. The kernel holds back a part-filled segment
 * until the next write or the end of stream, which then leave together.
 */
export const MSG_MORE = 0x8000;
/** `send` flag: a peer gone raises no SIGPIPE; the call fails with EPIPE instead. */
export const MSG_NOSIGNAL = 0x4000;
export const EPOLL_CTL_ADD = 1;
export const EPOLL_CTL_DEL = 2;
export const EPOLL_CTL_MOD = 3;
export const EFD_NONBLOCK = 0o4000;
export const EFD_CLOEXEC = 0o2000000;
// errno values.
export const EINTR = 4;
export const EBADF = 9;
export const EAGAIN = 11;
export const ENFILE = 23;
export const EMFILE = 24;
export const EPIPE = 32;
export const EMSGSIZE = 90;
export const EAFNOSUPPORT = 97;
export const EADDRINUSE = 98;
export const ECONNABORTED = 103;
export const ECONNRESET = 104;
export const ETIMEDOUT = 110;
export const ECONNREFUSED = 111;
export const EINPROGRESS = 115;
export const EADDRNOTAVAIL = 99;
export const ENETUNREACH = 101;
export const ENOBUFS = 105;
export const EHOSTUNREACH = 113;

/** Names of the errno values a message may need. */
export const ERRNO_NAMES: Record<number, string> = {
  [EINTR]: "EINTR",
  [EBADF]: "EBADF",
  [EAGAIN]: "EAGAIN",
  [ENFILE]: "ENFILE",
  [EMFILE]: "EMFILE",
  [EPIPE]: "EPIPE",
  [EMSGSIZE]: "EMSGSIZE",
  [EAFNOSUPPORT]: "EAFNOSUPPORT",
  [EADDRINUSE]: "EADDRINUSE",
  [ECONNABORTED]: "ECONNABORTED",
  [ECONNRESET]: "ECONNRESET",
  [ETIMEDOUT]: "ETIMEDOUT",
  [ECONNREFUSED]: "ECONNREFUSED",
  [EINPROGRESS]: "EINPROGRESS",
  [EADDRNOTAVAIL]: "EADDRNOTAVAIL",
  [ENETUNREACH]: "ENETUNREACH",
  [ENOBUFS]: "ENOBUFS",
  [EHOSTUNREACH]: "EHOSTUNREACH",
};

/**
 * `struct epoll_event`: `u32 events`, then `u64 data`. On x86_64 the kernel
 * packs it (12 bytes, data at offset 4); on aarch64 it is naturally aligned
 * (16 bytes, data at offset 8).
 */
export const EPOLL_EVENT_BYTES = Deno.build.arch === "x86_64" ? 12 : 16;
const EPOLL_DATA_OFFSET = Deno.build.arch === "x86_64" ? 4 : 8;

/** Writes one `epoll_event` at `index` of `view`: the events, and `data` as two u32s. */
export function encodeEpollEvent(
  view: DataView,
  index: number,
  events: number,
  fd: number,
  generation: number,
): void {
  const at = index * EPOLL_EVENT_BYTES;
  view.setUint32(at, events, true);
  view.setUint32(at + EPOLL_DATA_OFFSET, fd, true);
  view.setUint32(at + EPOLL_DATA_OFFSET + 4, generation, true);
}

/** The events of the `epoll_event` at `index`. */
export function epollEvents(view: DataView, index: number): number {
  return view.getUint32(index * EPOLL_EVENT_BYTES, true);
}

/** The descriptor in the `data` of the `epoll_event` at `index` (its low 32 bits). */
export function epollFd(view: DataView, index: number): number {
  return view.getUint32(index * EPOLL_EVENT_BYTES + EPOLL_DATA_OFFSET, true);
}

/** The generation in the `data` of the `epoll_event` at `index` (its high 32 bits). */
export function epollGeneration(view: DataView, index: number): number {
  return view.getUint32(index * EPOLL_EVENT_BYTES + EPOLL_DATA_OFFSET + 4, true);
}

/** `struct linger { int l_onoff; int l_linger; }`: 8 bytes. */
export function encodeLinger(into: Uint8Array, on: boolean, seconds: number): void {
  const view = new DataView(into.buffer, into.byteOffset, 8);
  view.setInt32(0, on ? 1 : 0, true);
  view.setInt32(4, seconds, true);
}

/** `struct iovec { void *iov_base; size_t iov_len; }`: 16 bytes (LP64: x86_64 and aarch64). */
export const IOVEC_BYTES = 16;
/**
 * `struct msghdr` (LP64): `msg_name` (a pointer) at 0, `msg_namelen` (u32)
 * at 8, `msg_iov` at 16, `msg_iovlen` (size_t) at 24, `msg_control` at 32,
 * `msg_controllen` at 40, `msg_flags` (int) at 48; 56 bytes with padding.
 */
export const MSGHDR_BYTES = 56;
/** `struct mmsghdr { struct msghdr msg_hdr; unsigned msg_len; }`: `msg_len` at 56; 64 bytes. */
export const MMSGHDR_BYTES = 64;
const MSG_NAME = 0;
const MSG_NAMELEN = 8;
const MSG_IOV = 16;
const MSG_IOVLEN = 24;
const MSG_FLAGS = 48;
const MSG_LEN = MSGHDR_BYTES;
const IOV_BASE = 0;
const IOV_LEN = 8;
/** Room for each message's address in a {@linkcode MessageBatch}: a `sockaddr_in6` (28), rounded up. */
export const NAME_BYTES = 32;
/** `MSG_TRUNC` in `msg_flags`: the datagram was longer than its buffer. */
export const MSG_TRUNC = 0x20;

/**
 * A vector of `struct mmsghdr` for `recvmmsg` and `sendmmsg`, with all it
 * points at: per message one `iovec`, {@linkcode NAME_BYTES} of address in
 * `names`, and a stretch of `data`. Everything is allocated once and the
 * pointers between the parts are written once, so a call per batch only
 * changes lengths (and, to send, where each message's bytes start); the
 * object keeps every part referenced while libc may use it.
 */
export class MessageBatch {
  /** Messages it holds at most. */
  readonly size: number;
  /** The messages' addresses, message `i`'s at `i * NAME_BYTES`. */
  readonly names: Uint8Array;
  /** Where the messages' bytes live (see {@linkcode MessageBatch.setBuffer}). */
  readonly data: Uint8Array;
  /** The `mmsghdr` array itself, message `i`'s at `i * MMSGHDR_BYTES` (for tests). */
  readonly headers: Uint8Array;
  readonly #headerView: DataView;
  readonly #iovecs: Uint8Array;
  readonly #iovecView: DataView;
  /** A pointer to each message's header: a call may start at any of them. */
  readonly #at: Deno.PointerValue[];
  // The address of `data`, as two u32 halves: message buffers are set
  // without a BigInt per message.
  readonly #dataLow: number;
  readonly #dataHigh: number;

  constructor(size: number, dataBytes: number) {
    this.size = size;
    this.names = new Uint8Array(size * NAME_BYTES);
    this.data = new Uint8Array(dataBytes);
    this.headers = new Uint8Array(size * MMSGHDR_BYTES);
    this.#headerView = new DataView(this.headers.buffer);
    this.#iovecs = new Uint8Array(size * IOVEC_BYTES);
    this.#iovecView = new DataView(this.#iovecs.buffer);
    const headers = Deno.UnsafePointer.of(this.headers)!;
    this.#at = Array.from(
      { length: size },
      (_, i) => Deno.UnsafePointer.offset(headers, i * MMSGHDR_BYTES),
    );
    const data = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(this.data)));
    this.#dataLow = Number(data & 0xffffffffn);
    this.#dataHigh = Number(data >> 32n);
    const names = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(this.names)));
    const iovecs = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(this.#iovecs)));
    for (let i = 0; i < size; i++) {
      const at = i * MMSGHDR_BYTES;
      const view = this.#headerView;
      view.setBigUint64(at + MSG_NAME, names + BigInt(i * NAME_BYTES), true);
      view.setUint32(at + MSG_NAMELEN, NAME_BYTES, true);
      view.setBigUint64(at + MSG_IOV, iovecs + BigInt(i * IOVEC_BYTES), true);
      view.setBigUint64(at + MSG_IOVLEN, 1n, true);
      // msg_control, msg_controllen, msg_flags and msg_len stay 0.
    }
  }

  /** The first message's header: what `recvmmsg` and `sendmmsg` take. */
  get pointer(): Deno.PointerValue {
    return this.#at[0]!;
  }

  /** Message `index`'s header: a call that starts there (`sendmmsg` after a failed message). */
  at(index: number): Deno.PointerValue {
    return this.#at[index]!;
  }

  /** Points message `index`'s iovec at `length` bytes of `data` from `offset`. */
  setBuffer(index: number, offset: number, length: number): void {
    const at = index * IOVEC_BYTES;
    const low = this.#dataLow + offset;
    const view = this.#iovecView;
    view.setUint32(at + IOV_BASE, low >>> 0, true);
    view.setUint32(at + IOV_BASE + 4, this.#dataHigh + (low > 0xffffffff ? 1 : 0), true);
    view.setUint32(at + IOV_LEN, length, true);
    view.setUint32(at + IOV_LEN + 4, 0, true);
  }

  /**
   * Sets message `index`'s `msg_namelen`: the room for the sender's address
   * before `recvmmsg` (which writes back the length it used), or the length
   * of the address in `names` to send to.
   */
  setNameLength(index: number, length: number): void {
    this.#headerView.setUint32(index * MMSGHDR_BYTES + MSG_NAMELEN, length, true);
  }

  /** Message `index`'s `msg_namelen`. */
  nameLength(index: number): number {
    return this.#headerView.getUint32(index * MMSGHDR_BYTES + MSG_NAMELEN, true);
  }

  /** The bytes message `index` carried (`msg_len`), once a call has returned it. */
  messageLength(index: number): number {
    return this.#headerView.getUint32(index * MMSGHDR_BYTES + MSG_LEN, true);
  }

  /** Message `index`'s `msg_flags` after `recvmmsg` ({@linkcode MSG_TRUNC}, …). */
  messageFlags(index: number): number {
    return this.#headerView.getInt32(index * MMSGHDR_BYTES + MSG_FLAGS, true);
  }
}

const SYMBOLS = {
  // sighandler_t signal(int signum, sighandler_t handler): returns the previous handler.
  signal: { parameters: ["i32", "pointer"], result: "pointer" },
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "pointer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "pointer", "pointer"], result: "i32" },
  bind: { parameters: ["i32", "pointer", "u32"], result: "i32" },
  listen: { parameters: ["i32", "i32"], result: "i32" },
  accept4: { parameters: ["i32", "pointer", "pointer", "i32"], result: "i32" },
  // size_t taken as u32: a 32-bit write zero-extends the register on x86_64 and
  // aarch64 alike, and a usize argument would cost a BigInt per call.
  read: { parameters: ["i32", "pointer", "u32"], result: "i32" },
  write: { parameters: ["i32", "pointer", "u32"], result: "i32" },
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  epoll_create1: { parameters: ["i32"], result: "i32" },
  epoll_ctl: { parameters: ["i32", "i32", "i32", "pointer"], result: "i32" },
  epoll_wait: { parameters: ["i32", "pointer", "i32", "i32"], result: "i32" },
  // The same call on a thread of Deno's own, as a promise: for a loop that
  // must not block its thread (in-process). Never per connection.
  epoll_wait_async: {
    name: "epoll_wait",
    parameters: ["i32", "pointer", "i32", "i32"],
    result: "i32",
    nonblocking: true,
  },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
  // int getpeername(int fd, struct sockaddr *addr, socklen_t *len), and getsockname alike.
  getpeername: { parameters: ["i32", "pointer", "pointer"], result: "i32" },
  getsockname: { parameters: ["i32", "pointer", "pointer"], result: "i32" },
  // int connect(int fd, const struct sockaddr *addr, socklen_t len)
  connect: { parameters: ["i32", "pointer", "u32"], result: "i32" },
  // int fcntl(int fd, int cmd, ...)
  fcntl: { parameters: ["i32", "i32"], result: "i32" },
  // ssize_t send(int fd, const void *buf, size_t len, int flags): one datagram on a
  // connected UDP socket, or a stream write with flags (MSG_MORE).
  send: { parameters: ["i32", "pointer", "u32", "i32"], result: "i32" },
  // ssize_t recv(int fd, void *buf, size_t len, int flags)
  recv: { parameters: ["i32", "pointer", "u32", "i32"], result: "i32" },
  // int recvmmsg(int fd, struct mmsghdr *msgvec, unsigned vlen, int flags, struct timespec *timeout)
  recvmmsg: { parameters: ["i32", "pointer", "u32", "i32", "pointer"], result: "i32" },
  // int sendmmsg(int fd, struct mmsghdr *msgvec, unsigned vlen, int flags)
  sendmmsg: { parameters: ["i32", "pointer", "u32", "i32"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/** Whether this process may call libc: Linux, and `--allow-ffi` granted. */
export function canUseLibc(): boolean {
  return Deno.build.os === "linux" &&
    Deno.permissions.querySync({ name: "ffi" }).state === "granted";
}

// Opened once, when this module is first imported, if it may be: it stays
// open for the life of the process.
const library = canUseLibc() ? Deno.dlopen("libc.so.6", SYMBOLS) : undefined;

function libc(): Deno.DynamicLibrary<typeof SYMBOLS> {
  if (library === undefined) throw new Deno.errors.NotCapable("libc needs Linux and --allow-ffi");
  return library;
}

/**
 * Sets `signal`'s disposition and returns the previous one as a number
 * (`0` default, `1` ignore, anything else a handler's address).
 */
export function setSignalDisposition(signal: number, disposition: bigint): bigint {
  const previous = libc().symbols.signal(signal, Deno.UnsafePointer.create(disposition));
  return Deno.UnsafePointer.value(previous);
}

/**
 * Makes the kernel drop `SIGUSR1` for this process, so it can never start
 * the inspector.
 *
 * Deno installs its own `SIGUSR1` handler half a second after start-up, and
 * that would replace an "ignore" set earlier. Its handlers all go through one
 * registry that installs the process's handler once per signal: so we make
 * the registry install it now (a listener added and removed at once), then
 * replace it with "ignore". Deno's later registration finds the signal
 * already installed and leaves the disposition alone. The caller checks again
 * later with {@linkcode isSignalIgnored}, in case a future Deno differs.
 */
export function ignoreSigusr1(): void {
  const nothing = () => {};
  Deno.addSignalListener("SIGUSR1", nothing);
  try {
    setSignalDisposition(SIGUSR1, SIG_IGN);
  } finally {
    Deno.removeSignalListener("SIGUSR1", nothing);
  }
}

/** Whether `SIGUSR1` is still ignored; sets it back to ignored if not. */
export function isSignalIgnored(): boolean {
  const previous = setSignalDisposition(SIGUSR1, SIG_IGN);
  return previous === SIG_IGN;
}

/** An address as a `struct sockaddr` holds it. */
export interface SocketAddress {
  family: number;
  /** IPv4 dotted quad, or IPv6 as a URL writes it (lowercase, `::` for the longest run of zeros). */
  hostname: string;
  port: number;
}

/**
 * Reads a `struct sockaddr_in` or `sockaddr_in6`: `sa_family` (host order,
 * 2 bytes) at 0, the port (network order) at 2; IPv4's 4 address bytes at 4;
 * IPv6's 16 at 8 (after 4 bytes of flow info). Undefined for other families.
 */
export function decodeSockaddr(bytes: Uint8Array): SocketAddress | undefined {
  // Read byte by byte: it runs for every IPv6 client, and every new IPv4 host.
  const family = bytes[0]! | (bytes[1]! << 8);
  const port = (bytes[2]! << 8) | bytes[3]!;
  if (family === AF_INET) {
    return { family, hostname: `${bytes[4]}.${bytes[5]}.${bytes[6]}.${bytes[7]}`, port };
  }
  if (family === AF_INET6) {
    // An IPv4 client of a dual-stack socket (::ffff:0:0/96): written as Deno writes it.
    if (isMapped(bytes)) {
      return {
        family,
        hostname: `::ffff:${bytes[20]}.${bytes[21]}.${bytes[22]}.${bytes[23]}`,
        port,
      };
    }
    const groups: string[] = [];
    for (let i = 8; i < 24; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
    return { family, hostname: canonicalHost(groups.join(":")), port };
  }
  return undefined;
}

/**
 * A key for the `struct sockaddr_in`/`sockaddr_in6` at `at` in `bytes`, the
 * same for the same address and port, read without allocating for IPv4:
 * the address times 65536 plus the port (below 2^48, exact). IPv6: the eight
 * groups, the port and the 32-bit scope as one short string of UTF-16 code
 * units (opaque: compared, never shown).
 */
export function sockaddrKey(bytes: Uint8Array, at: number): string | number {
  const port = (bytes[at + 2]! << 8) | bytes[at + 3]!;
  if ((bytes[at]! | (bytes[at + 1]! << 8)) === AF_INET) {
    const address = ((bytes[at + 4]! * 256 + bytes[at + 5]!) * 256 + bytes[at + 6]!) * 256 +
      bytes[at + 7]!;
    return address * 65536 + port;
  }
  const group = (offset: number) => (bytes[at + offset]! << 8) | bytes[at + offset + 1]!;
  return String.fromCharCode(
    group(8),
    group(10),
    group(12),
    group(14),
    group(16),
    group(18),
    group(20),
    group(22),
    port,
    group(24),
    group(26),
  );
}

// Ten zero bytes, then two of 0xff, from the address's start at 8.
function isMapped(bytes: Uint8Array): boolean {
  for (let i = 8; i < 18; i++) if (bytes[i] !== 0) return false;
  return bytes[18] === 0xff && bytes[19] === 0xff;
}

/** Writes `address` as a `struct sockaddr_in`/`sockaddr_in6` into `into`; returns its length. */
export function encodeSockaddr(address: { hostname: string; port: number }, into: Uint8Array) {
  into.fill(0);
  const view = new DataView(into.buffer, into.byteOffset, into.byteLength);
  view.setUint16(2, address.port, false);
  if (!address.hostname.includes(":")) {
    // A host name here would become 0.0.0.0, every interface: never guess.
    if (!/^\d{1,3}(\.\d{1,3}){3}$/.test(address.hostname)) {
      throw new RangeError(`expected an IP address, got ${JSON.stringify(address.hostname)}`);
    }
    view.setUint16(0, AF_INET, true);
    address.hostname.split(".").forEach((part, i) => into[4 + i] = Number(part));
    return SOCKADDR_IN_BYTES;
  }
  view.setUint16(0, AF_INET6, true);
  // Expand `::` to the zero groups it stands for.
  const [head, tail] = canonicalHost(address.hostname).split("::") as [string, string?];
  const left = head === "" ? [] : head.split(":");
  const right = tail === undefined || tail === "" ? [] : tail.split(":");
  const groups = [...left, ...Array(8 - left.length - right.length).fill("0"), ...right];
  groups.forEach((group, i) => view.setUint16(8 + 2 * i, parseInt(group, 16), false));
  return SOCKADDR_IN6_BYTES;
}

/** An IPv6 address as a URL writes it, so two spellings of one address compare equal. */
function canonicalHost(hostname: string): string {
  if (!hostname.includes(":")) return hostname;
  return new URL(`http://[${hostname}]/`).hostname.slice(1, -1);
}

// Buffers handed to libc by pointer: allocated once, referenced for good.
const addressBytes = new Uint8Array(128);
const lengthWord = new Uint32Array(1);
const unspecified = new Uint8Array(SOCKADDR_IN_BYTES); // sa_family = AF_UNSPEC
let pointers:
  | { address: Deno.PointerValue; length: Deno.PointerValue; unspecified: Deno.PointerValue }
  | undefined;

function pointersOf() {
  pointers ??= {
    address: Deno.UnsafePointer.of(addressBytes),
    length: Deno.UnsafePointer.of(lengthWord),
    unspecified: Deno.UnsafePointer.of(unspecified),
  };
  return pointers;
}

function addressOf(
  call: "getpeername" | "getsockname",
  fd: number,
): SocketAddress | undefined {
  const { address, length } = pointersOf();
  lengthWord[0] = addressBytes.length;
  if (libc().symbols[call](fd, address, length) !== 0) return undefined;
  return decodeSockaddr(addressBytes);
}

const sameAddress = (a: SocketAddress | undefined, b: { hostname: string; port: number }) =>
  a !== undefined && a.port === b.port && a.hostname === canonicalHost(b.hostname);

/**
 * Which descriptors hold which connections, by `local|remote`: built by one
 * pass over the descriptors, then trusted only after checking (a descriptor
 * may have been closed and its number reused since).
 */
const byAddresses = new Map<string, number>();
/**
 * Passes are paid from a budget that refills at a tenth of the time elapsed,
 * up to 100 ms: they stay under a tenth of the time however many resets come
 * at once (a burst of resets of existing connections needs one pass anyway).
 * A miss with no budget left closes cleanly instead.
 */
const SCAN_SHARE = 0.1;
const SCAN_BUDGET_MAX_MS = 100;
let scanBudgetMs = SCAN_BUDGET_MAX_MS;
let budgetAt = 0;
/** Descriptors in a row that do not exist before the pass stops. */
const GAP = 64;

function keyOf(local: Deno.NetAddr, remote: Deno.NetAddr): string {
  return `${local.port} ${canonicalHost(local.hostname)}|${remote.port} ${
    canonicalHost(remote.hostname)
  }`;
}

function holds(fd: number, local: Deno.NetAddr, remote: Deno.NetAddr): boolean {
  return sameAddress(addressOf("getpeername", fd), remote) &&
    sameAddress(addressOf("getsockname", fd), local);
}

function scan(): void {
  byAddresses.clear();
  const startedAt = performance.now();
  for (let fd = 3, gap = 0; gap < GAP; fd++) {
    const remote = addressOf("getpeername", fd);
    if (remote === undefined) {
      // Not a connected socket; a run of descriptors that do not exist ends the pass.
      gap = libc().symbols.fcntl(fd, F_GETFD) === -1 ? gap + 1 : 0;
      continue;
    }
    gap = 0;
    const local = addressOf("getsockname", fd);
    if (local === undefined) continue;
    byAddresses.set(`${local.port} ${local.hostname}|${remote.port} ${remote.hostname}`, fd);
  }
  scanBudgetMs -= performance.now() - startedAt;
}

/** The descriptor of the TCP connection between `local` and `remote`, or -1. */
export function descriptorOf(local: Deno.NetAddr, remote: Deno.NetAddr): number {
  const key = keyOf(local, remote);
  const known = byAddresses.get(key);
  if (known !== undefined && holds(known, local, remote)) return known;
  const now = performance.now();
  scanBudgetMs = Math.min(SCAN_BUDGET_MAX_MS, scanBudgetMs + (now - budgetAt) * SCAN_SHARE);
  budgetAt = now;
  if (scanBudgetMs <= 0) return -1;
  scan();
  return byAddresses.get(key) ?? -1;
}

/**
 * Makes Linux send a reset on `conn` now (see the module doc); Deno still
 * closes it as usual. Returns false when its descriptor was not found.
 */
export function resetConnection(conn: Deno.Conn): boolean {
  let local: Deno.NetAddr, remote: Deno.NetAddr;
  try {
    local = conn.localAddr as Deno.NetAddr;
    remote = conn.remoteAddr as Deno.NetAddr;
  } catch {
    return false; // already closed
  }
  const fd = descriptorOf(local, remote);
  if (fd < 0) return false;
  byAddresses.delete(keyOf(local, remote));
  return libc().symbols.connect(fd, pointersOf().unspecified, SOCKADDR_IN_BYTES) === 0;
}

/** The most IPv4 client hosts {@linkcode Sys.lastHost} keeps written; past it, it starts again. */
const HOSTS_KEPT = 4096;

/**
 * The socket and epoll calls, each returning its result or `-errno`. One
 * per thread (errno is per thread): a Worker makes its own.
 */
export class Sys {
  readonly #c = libc().symbols;
  // This thread's errno, read through a view onto its own memory: a plain
  // load, where UnsafePointerView.getInt32 costs a call per failed read (EAGAIN).
  readonly #errno = new Int32Array(
    Deno.UnsafePointerView.getArrayBuffer(libc().symbols.__errno_location()!, 4),
  );
  // Small buffers handed to libc by pointer, kept for the life of this object.
  readonly #int = new Int32Array(1);
  readonly #intPointer = Deno.UnsafePointer.of(this.#int);
  readonly #length = new Uint32Array(1);
  readonly #lengthPointer = Deno.UnsafePointer.of(this.#length);
  readonly #address = new Uint8Array(128);
  readonly #addressPointer = Deno.UnsafePointer.of(this.#address);
  readonly #linger = new Uint8Array(8);
  readonly #lingerPointer = Deno.UnsafePointer.of(this.#linger);
  /** IPv4 hosts as {@linkcode Sys.lastHost} wrote them, by address. */
  readonly #hosts = new Map<number, string>();
  readonly #counter = new BigUint64Array(1);
  readonly #counterPointer = Deno.UnsafePointer.of(this.#counter);

  #result(value: number): number {
    return value < 0 ? -this.#errno[0]! : value;
  }

  /** A nonblocking socket for `family` (AF_INET or AF_INET6): TCP, or `SOCK_DGRAM` for UDP. */
  socket(family: number, type: number = SOCK_STREAM): number {
    return this.#result(this.#c.socket(family, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  }

  /** Sets an int option (SO_REUSEADDR, TCP_NODELAY, …). */
  setInt(fd: number, level: number, option: number, value: number): number {
    this.#int[0] = value;
    return this.#result(this.#c.setsockopt(fd, level, option, this.#intPointer, 4));
  }

  /** Reads an int option; `-errno` on failure. */
  getInt(fd: number, level: number, option: number): number {
    this.#length[0] = 4;
    const result = this.#c.getsockopt(fd, level, option, this.#intPointer, this.#lengthPointer);
    return result < 0 ? -this.#errno[0]! : this.#int[0]!;
  }

  /** Sets SO_LINGER to {on, 0}: the next close sends a reset. */
  lingerZero(fd: number): number {
    encodeLinger(this.#linger, true, 0);
    return this.#result(this.#c.setsockopt(fd, SOL_SOCKET, SO_LINGER, this.#lingerPointer, 8));
  }

  /** The pending error of a socket (SO_ERROR): 0, or an errno. */
  socketError(fd: number): number {
    return Math.abs(this.getInt(fd, SOL_SOCKET, SO_ERROR));
  }

  bind(fd: number, address: { hostname: string; port: number }): number {
    const length = encodeSockaddr(address, this.#address);
    return this.#result(this.#c.bind(fd, this.#addressPointer, length));
  }

  listen(fd: number, backlog: number): number {
    return this.#result(this.#c.listen(fd, backlog));
  }

  /** Accepts one connection, nonblocking; its peer's address is then {@linkcode Sys.lastAddress}. */
  accept(fd: number): number {
    this.#length[0] = this.#address.length;
    return this.#result(
      this.#c.accept4(fd, this.#addressPointer, this.#lengthPointer, SOCK_NONBLOCK | SOCK_CLOEXEC),
    );
  }

  /** Starts a connect; `-EINPROGRESS` means it goes on (wait for EPOLLOUT). */
  connect(fd: number, address: { hostname: string; port: number }): number {
    const length = encodeSockaddr(address, this.#address);
    return this.#result(this.#c.connect(fd, this.#addressPointer, length));
  }

  /**
   * Starts a connect to an address encoded beforehand ({@linkcode encodeSockaddr})
   * into a buffer the caller keeps referenced; `-EINPROGRESS` as above.
   */
  connectEncoded(fd: number, sockaddr: Deno.PointerValue, length: number): number {
    return this.#result(this.#c.connect(fd, sockaddr, length));
  }

  /** The address the last accept, getsockname or getpeername filled in. */
  lastAddress(): SocketAddress | undefined {
    return decodeSockaddr(this.#address);
  }

  /**
   * The host and the port of {@linkcode Sys.lastAddress}, without the object:
   * the host of an IPv4 address is written once and kept (clients come from
   * few addresses, and this runs for every accepted connection).
   */
  lastHost(): string | undefined {
    const bytes = this.#address;
    if ((bytes[0]! | (bytes[1]! << 8)) !== AF_INET) return decodeSockaddr(bytes)?.hostname;
    const key = ((bytes[4]! * 256 + bytes[5]!) * 256 + bytes[6]!) * 256 + bytes[7]!;
    let host = this.#hosts.get(key);
    if (host === undefined) {
      if (this.#hosts.size >= HOSTS_KEPT) this.#hosts.clear();
      host = decodeSockaddr(bytes)!.hostname;
      this.#hosts.set(key, host);
    }
    return host;
  }

  /** The port of {@linkcode Sys.lastAddress}. */
  lastPort(): number {
    return (this.#address[2]! << 8) | this.#address[3]!;
  }

  /** The local address of `fd`. */
  localAddress(fd: number): SocketAddress | undefined {
    this.#length[0] = this.#address.length;
    if (this.#c.getsockname(fd, this.#addressPointer, this.#lengthPointer) < 0) return undefined;
    return decodeSockaddr(this.#address);
  }

  /**
   * Reads from a socket: read(2) without the file layer
   * (`vfs_read`, the position lock, the permission hooks), which cost a
   * read on a socket about a tenth of its time. The data plane's read.
   */
  recv(fd: number, into: Deno.PointerValue, length: number): number {
    return this.#result(this.#c.recv(fd, into, length, 0));
  }

  /**
   * Writes to a socket (a stream's bytes, or one datagram on a connected
   * UDP socket), without the file layer, and with no SIGPIPE if the peer
   * is gone. The data plane's write.
   */
  send(fd: number, from: Deno.PointerValue, length: number): number {
    return this.#result(this.#c.send(fd, from, length, MSG_NOSIGNAL));
  }

  /**
   * Sends like {@linkcode Sys.send} on a stream socket, saying that more
   * follows ({@linkcode MSG_MORE}): the caller ends the stream right after,
   * and the last bytes and the FIN leave as one packet.
   */
  sendMore(fd: number, from: Deno.PointerValue, length: number): number {
    return this.#result(this.#c.send(fd, from, length, MSG_MORE | MSG_NOSIGNAL));
  }

  /**
   * Receives up to `count` datagrams into `batch`, without waiting: how many
   * came (then {@linkcode MessageBatch.messageLength} of each), or `-EAGAIN`
   * when none waits. An error (ICMP, on a connected socket) comes back
   * alone, ahead of the datagrams behind it.
   */
  recvmmsg(fd: number, batch: MessageBatch, count: number): number {
    return this.#result(this.#c.recvmmsg(fd, batch.pointer, count, 0, null));
  }

  /**
   * Sends `count` datagrams of `batch` from message `from` on: how many
   * went (they go in order; the first that fails stops the call), or
   * `-errno` when the first could not.
   */
  sendmmsg(fd: number, batch: MessageBatch, from: number, count: number): number {
    return this.#result(this.#c.sendmmsg(fd, batch.at(from), count, 0));
  }

  shutdownWrite(fd: number): number {
    return this.#result(this.#c.shutdown(fd, SHUT_WR));
  }

  close(fd: number): number {
    return this.#result(this.#c.close(fd));
  }

  epollCreate(): number {
    return this.#result(this.#c.epoll_create1(EFD_CLOEXEC));
  }

  /** `epoll_ctl` with one event, written into `event` (a buffer of EPOLL_EVENT_BYTES). */
  epollCtl(
    epfd: number,
    op: number,
    fd: number,
    events: number,
    generation: number,
    event: { view: DataView; pointer: Deno.PointerValue },
  ): number {
    encodeEpollEvent(event.view, 0, events, fd, generation);
    return this.#result(this.#c.epoll_ctl(epfd, op, fd, event.pointer));
  }

  epollWait(epfd: number, events: Deno.PointerValue, max: number, timeoutMs: number): number {
    return this.#result(this.#c.epoll_wait(epfd, events, max, timeoutMs));
  }

  /** The same wait on a thread of Deno's, so this thread's event loop runs on meanwhile. */
  async epollWaitAsync(
    epfd: number,
    events: Deno.PointerValue,
    max: number,
    timeoutMs: number,
  ): Promise<number> {
    const result = await this.#c.epoll_wait_async(epfd, events, max, timeoutMs);
    // errno belongs to the thread that made the call: report a bare failure.
    return result < 0 ? -EINTR : result;
  }

  eventfd(): number {
    return this.#result(this.#c.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  }

  /** Adds 1 to an eventfd's counter: wakes an epoll_wait that watches it. */
  wake(fd: number): number {
    this.#counter[0] = 1n;
    return this.#result(this.#c.write(fd, this.#counterPointer, 8));
  }

  /** Empties an eventfd's counter. */
  drain(fd: number): number {
    return this.#result(this.#c.read(fd, this.#counterPointer, 8));
  }
}

/** `-errno` as an Error whose `code` is the errno's name (`EMFILE`, …). */
export function errnoError(negative: number, what: string): Error {
  const code = ERRNO_NAMES[-negative] ?? `errno ${-negative}`;
  return Object.assign(new Error(`${what}: ${code}`), { code });
}
