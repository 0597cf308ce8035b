/**
 * The one module that calls the C library through `Deno.dlopen`: every
 * binding, constant and struct layout the balancer uses lives here, so the
 * sharp edges of FFI are in one place.
 *
 * Today it holds one thing: switching off `SIGUSR1`. Deno (since 2.9.2), like
 * Node, starts V8's inspector on 127.0.0.1:9229 when the process gets
 * `SIGUSR1`, whether or not the program listens for that signal. Any local
 * user can then attach a debugger and run code inside the balancer with all
 * of its permissions. Deno has no flag to turn that off, so the balancer sets
 * the signal's disposition to "ignore" itself.
 *
 * Needs `--allow-ffi` (Linux only); without it the caller warns instead.
 *
 * @module
 */

/** `SIGUSR1` on Linux (x86_64 and aarch64 alike). */
export const SIGUSR1 = 10;
/** `SIG_IGN`, the "ignore this signal" disposition, as a pointer value. */
export const SIG_IGN = 1n;
/** `SIG_DFL`, the default disposition. */
export const SIG_DFL = 0n;

const SYMBOLS = {
  // sighandler_t signal(int signum, sighandler_t handler): returns the previous handler.
  signal: { parameters: ["i32", "pointer"], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

let library: Deno.DynamicLibrary<typeof SYMBOLS> | undefined;

function libc(): Deno.DynamicLibrary<typeof SYMBOLS> {
  library ??= Deno.dlopen("libc.so.6", SYMBOLS);
  return library;
}

/** Whether this process may call libc: Linux, and `--allow-ffi` granted. */
export function canUseLibc(): boolean {
  return Deno.build.os === "linux" &&
    Deno.permissions.querySync({ name: "ffi" }).state === "granted";
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
