//! JavaScript frames of a Node.js process that runs without perf-map flags: what userspace
//! tells the kernel of a V8 build's layout, and the frames the kernel's walk records for
//! userspace to name.
//!
//! V8's generated code keeps frame pointers, and a JavaScript frame holds its function just
//! below the frame pointer. The walk (at `uv_tcp_init`, where a handle is made under the
//! caller's code) reads each such function's SharedFunctionInfo then and there: functions are
//! young objects that move at the next scavenge, their SharedFunctionInfo lives on. Userspace
//! later reads the name, script and line from the process, checking every object's type.

/// JavaScript frames kept per walk, and frames walked from the first of them.
pub const JS_FRAMES: usize = 16;
pub const JS_WALK_DEPTH: u32 = 48;

/// Frames above a probed libuv call within which the JavaScript that made the handle is
/// looked for. Node's `net.connect()`, `http.get()` and the like have their first JavaScript
/// frame 7 frames up (node 20: the handle wrap's constructors and V8's API-call builtins lie
/// between); the event loop making a handle for an accepted connection has none at all.
pub const JS_CALLER_DEPTH: u32 = 16;

/// Code addresses a walk keeps: the probed function's, its return address, and one per frame
/// the look and the walk read. They are the handle's native stack (cut there, where the
/// kernel's own walk goes on to 127): the walk that finds the JavaScript frames reads every
/// frame's return address anyway, and `bpf_get_stackid` would read them all again.
pub const JS_NATIVE_FRAMES: usize = 2 + (JS_CALLER_DEPTH + JS_WALK_DEPTH) as usize;

/// Distinct JavaScript stacks the kernel keeps (preallocated, about 1.6 MiB). Never deleted,
/// like `STACKS`, so an id names the same frames for the whole trace; when full, new ones are
/// counted as lost.
pub const JS_STACK_SLOTS: u32 = 2048;

/// Processes whose V8 layout the kernel knows at once.
pub const V8_PROCESSES: u32 = 1024;

/// `V8_LAYOUTS` key of the layout for processes not listed by pid: set while every V8 binary
/// sockleak has seen shares one layout, so a node started after the last scan is walked too.
pub const ANY_V8_PROCESS: u32 = 0;

/// `js_stack_id` of a socket or handle without JavaScript frames.
pub const NO_JS_STACK: u32 = 0;

/// Where a JavaScript frame keeps its context (a heap object; V8's own frames keep a
/// small-integer type marker there), its function, and an interpreted frame's bytecode offset:
/// byte offsets from the frame pointer, the same on x86-64 since V8 8.7 (node 16). Fixed, so
/// the walk reads them at constant places (older verifiers refuse a variable offset into the
/// program's stack); userspace checks a binary's `v8dbg_off_fp_*` agree before using it.
pub const V8_FP_CONTEXT: i16 = -8;
pub const V8_FP_FUNCTION: i16 = -16;
pub const V8_FP_BYTECODE_OFFSET: i16 = -40;

/// Where one V8 build keeps what the walk reads of its objects, from the build's `v8dbg_*`
/// symbols: byte offsets, and instance types.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V8Layout {
    /// `HeapObject::map`, `Map::instance_type`, `JSFunction::shared`.
    pub object_map: u16,
    pub map_instance_type: u16,
    pub function_shared: u16,
    /// The instance types of `JSFunction` and its subclasses.
    pub first_function_type: u16,
    pub last_function_type: u16,
    pub _pad: [u16; 3],
    /// Where the code of V8's `Builtins::InvokeApiFunction` lies in the process (start, end;
    /// both 0 when not known): native code calling a native function through V8, as node's
    /// event loop does to make the handle of a connection it accepted. A frame returning
    /// into it ends the look for the JavaScript that made a handle: there is none.
    pub native_api_call: [u64; 2],
}

/// One JavaScript frame the walk found.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JsFrame {
    /// Tagged pointer to the function's SharedFunctionInfo.
    pub shared: u64,
    /// The frame's bytecode offset (counted from the tagged BytecodeArray), or -1 when the
    /// frame is not interpreted.
    pub bytecode_offset: i32,
    /// The frame's index in its stack's `native` addresses: where its code address is.
    pub depth: u16,
    pub _pad: u16,
}

/// A walk's JavaScript frames and the native stack they are in, innermost first.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsStack {
    /// The whole stack's hash; the key is its low half, so a stored stack with another hash
    /// under the same key is a collision, never taken for this one.
    pub hash: u64,
    /// The process whose heap the pointers are in.
    pub pid: u32,
    pub count: u32,
    pub frames: [JsFrame; JS_FRAMES],
    /// How many of `native` the walk read.
    pub native_count: u32,
    pub _pad: u32,
    /// The code addresses of the stack: the probed function's entry, the return address at
    /// the stack pointer (at a function's entry the frame pointer is still its caller's), then
    /// each frame's return address.
    pub native: [u64; JS_NATIVE_FRAMES],
}

impl Default for JsStack {
    fn default() -> Self {
        Self {
            hash: 0,
            pid: 0,
            count: 0,
            frames: [JsFrame::default(); JS_FRAMES],
            native_count: 0,
            _pad: 0,
            native: [0; JS_NATIVE_FRAMES],
        }
    }
}

const _: () = assert!(core::mem::size_of::<V8Layout>() == 32);

const _: () = assert!(core::mem::size_of::<JsFrame>() == 16);
const _: () =
    assert!(core::mem::size_of::<JsStack>() == 16 + 16 * JS_FRAMES + 8 + 8 * JS_NATIVE_FRAMES);
