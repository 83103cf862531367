# zerocan wire schema: the envelope of every zerocan message.
#
# A zerocan message is a ZeroMQ multipart message:
#   [routing frames...] [empty delimiter] [envelope] [payload frame 1..N] [signature]?
# The envelope (this schema, standard Cap'n Proto framing with its segment table) is
# frame 0 after the delimiter.  Payload frames follow in the order the envelope's
# FrameRef.index values name them (index 1 = first frame after the envelope).
# docs/FORMAT.md is the prose version of this file; the two must agree (a test
# checks `protocolVersion` against the document).
#
# Evolution rules: append fields, never renumber or retype; a change that an old
# reader would misread bumps `protocolVersion`.

@0xcf3c4a418d55852e;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("zerocan::wire");

const protocolVersion :UInt16 = 1;
# Readers reject any other value in Envelope.version.

struct Envelope {
  version @0 :UInt16;
  # Must equal protocolVersion.

  messageId @1 :UInt64;
  # Unique per sender session; a Result names the Apply it answers by this id.

  sessionId @2 :UInt64;
  # Random per sender instance; with `sequence`, the replay window's key.

  sequence @3 :UInt64;
  # Strictly increasing per session, starting at 1.

  payloadFrames @4 :UInt32;
  # Number of payload frames that follow the envelope (bound: DecodeLimits.maxFrames - 1).

  sentAtNs @5 :UInt64;
  # Sender's wall clock, nanoseconds since the Unix epoch (0 = unknown). Informative only;
  # the C++ writer stamps the coarse clock (resolution 1-4 ms).

  body :union {
    apply @6 :Apply;
    result @7 :Result;
    hello @8 :Hello;
    heartbeat @9 :Heartbeat;
    goodbye @10 :Void;
    started @11 :Started;
    # Engine -> broker, with the call's routing frames: the engine has begun running the
    # call named by `callId`. A call lost with its engine before this arrived never ran and
    # is sent to another engine; one lost after it had started fails (or is retried).
    draining @12 :Void;
    # Engine -> broker: the engine is stopping; it takes no new calls but finishes (and
    # answers) the ones it holds, heartbeating meanwhile, then says goodbye.
    cancel @13 :Cancel;
    # Client -> engine (directly or through a broker): give up a call.
    credit @14 :Credit;
    # Client -> engine: the client consumed stream items; the engine may send more.
  }
}

struct Started {
  callId @0 :UInt64;
  # messageId of the Apply that started.
}

struct Apply {
  function @0 :Text;
  # Name the engine registered the function under (bound: 1024 bytes).

  args @1 :List(Value);
  kwargs @2 :List(Field);
  # Keyword arguments in the caller's order.

  timeoutMs @3 :UInt32;
  # Caller's deadline in milliseconds from sentAtNs (0 = none). Engines may skip expired calls.

  retries @4 :UInt16;
  # How many more times a broker may run this call on another engine when the engine
  # running it is lost (0 = never: the call fails with zerocan.EngineLost). Set only by
  # callers whose function is safe to run twice. It lies in the Apply's existing data
  # word: an Apply that leaves it 0 is byte for byte what it was before the field existed.
  streamCredits @5 :UInt16;
  # 0: a plain call, answered by one result. N > 0: a stream call: the engine may send up
  # to N stream items before the client grants more with `credit` messages.

  sharedResults @6 :Bool;
  # The caller reads result payloads in place from an arena of its host: set only by a
  # caller whose own peer (the engine, or the broker) answered its hello from the same
  # host (docs/FORMAT.md, "Shared memory arenas"). Its data word is the Apply's second.
}

struct Result {
  callId @0 :UInt64;
  # messageId of the Apply this answers.

  engineId @1 :Text;

  union {
    ok @2 :Value;
    error @3 :RemoteError;
  }

  stream @4 :StreamPart;
  # `none` for the one result of a plain call. For a stream call: `item` for each item
  # (in `ok`), then exactly one `end` (`ok` = null, or `error`).
}

enum StreamPart {
  none @0;
  item @1;
  end @2;
}

struct Cancel {
  callId @0 :UInt64;
  # messageId of the apply to give up. Its client ends the call at once; the engine (or
  # broker) drops it if queued, tells a running function, and sends no result for it.
}

struct Credit {
  callId @0 :UInt64;
  # messageId of the stream call.
  items @1 :UInt32;
  # More items the engine may send (added to what is left of earlier grants).
}

struct RemoteError {
  type @0 :Text;       # e.g. "std::invalid_argument", "ValueError", "zerocan.DecodeError"
  message @1 :Text;
  function @2 :Text;   # the function that was called
  where @3 :Text;      # engine id, host, or traceback text
}

struct Hello {
  peerId @0 :Text;
  role @1 :Text;       # "client", "engine", "broker"
  functions @2 :List(Text);
  host @3 :Host;
  # Where the sender runs, for deciding whether the two peers can share memory. Unset
  # (null) from senders that never share memory.
}

struct Host {
  # Two peers share memory when all three agree: the same running kernel, the same
  # network namespace (abstract Unix sockets are private to one) and the same user.
  bootId @0 :Text;      # /proc/sys/kernel/random/boot_id
  netns @1 :UInt64;     # inode of /proc/self/ns/net
  uid @2 :UInt32;       # effective user id
}

struct Heartbeat {
  peerId @0 :Text;
  nowNs @1 :UInt64;
}

struct Field {
  key @0 :Text;
  value @1 :Value;
}

struct Entry {
  key @0 :Value;
  value @1 :Value;
}

struct Value {
  union {
    null @0 :Void;
    bool @1 :Bool;
    int @2 :Int64;
    uint @3 :UInt64;
    float @4 :Float64;
    text @5 :Text;
    bytes @6 :Payload;
    list @7 :List(Value);
    map @8 :List(Entry);
    # Keys in insertion order; duplicates are the sender's business.
    tensor @9 :Tensor;
    extension @10 :Extension;
  }

  sequenceType @11 :SequenceType;
  # Which sequence type a `list` or `tensor` value was made from, for languages that
  # tell them apart (Python: list, tuple, numpy array). Writers set it on `list` and
  # `tensor` only; readers that have no such types (C++) ignore it, and a forwarder
  # copies it as received. It lies in the Value's existing data word: a value that
  # leaves it unset is byte for byte what it was before the field existed.
}

enum SequenceType {
  unspecified @0;
  # `list`: a list (Python list); `tensor`: an array (numpy.ndarray).
  list @1;
  # A list. On a `tensor`: a homogeneous list of numbers (or bools) sent as a compact
  # typed array, to be read back as a list.
  tuple @2;
  # A tuple (immutable sequence), on a `list` or a `tensor`.
}

struct Payload {
  # Bytes that live either inside the envelope or in a payload frame.
  union {
    inline @0 :Data;
    # Small payloads (below the sender's inline threshold). 8-byte aligned within the
    # envelope, so a word-aligned envelope gives word-aligned inline data.
    frame @1 :FrameRef;
    shared @2 :SharedRef;
    # Bytes in a shared-memory arena of the sender's host (docs/FORMAT.md, "Shared
    # memory arenas"). Sent only to a peer whose hello said it shares the host; a reader
    # that does not accept references rejects the message naming the field.
  }
}

struct SharedRef {
  arena @0 :Text;
  # The arena's name: the abstract Unix socket (without its leading NUL) from which a
  # process of the same user obtains the arena's memory file. Its random part is the
  # capability: names travel only to peers on the same host.
  offset @1 :UInt64;   # bytes from the start of the arena
  length @2 :UInt64;   # bytes; offset + length <= the arena's sealed size
  block @3 :UInt64;
  # The serial number of the arena block the bytes lie in (its owner numbers blocks from
  # 1 as it hands them out; 0: any block). A reader's lease names it, so that a reference
  # read late never holds a later block that reuses the same bytes.
}

struct FrameRef {
  index @0 :UInt32;    # 1-based index of the payload frame after the envelope
  offset @1 :UInt64;   # bytes from the start of that frame
  length @2 :UInt64;   # bytes; offset + length <= frame size
}

enum DType {
  bool @0;
  int8 @1;
  int16 @2;
  int32 @3;
  int64 @4;
  uint8 @5;
  uint16 @6;
  uint32 @7;
  uint64 @8;
  float16 @9;
  float32 @10;
  float64 @11;
  complex64 @12;
  complex128 @13;
}

enum Order {
  c @0;        # row-major
  fortran @1;  # column-major
}

enum ByteOrder {
  little @0;
  big @1;
}

enum Packing {
  # How an integer tensor's elements are stored. Senders may store a small integer
  # array in the narrowest integer type that holds every element; readers widen back
  # to `dtype`. Only inline payloads are packed (a zero-copy frame is never rewritten).
  none @0;
  int8 @1;
  int16 @2;
  int32 @3;
  uint8 @4;
  uint16 @5;
  uint32 @6;
}

struct Tensor {
  dtype @0 :DType;
  shape @1 :List(UInt64);
  # Elements per dimension; rank bound DecodeLimits.maxRank. Product times the element
  # size (of `packing` if set, else of `dtype`) must equal the payload's length.
  order @2 :Order;
  byteOrder @3 :ByteOrder;
  packing @4 :Packing;
  data @5 :Payload;
}

struct Extension {
  # A value of a type registered by name (e.g. "numpy.ndarray", "pandas.DataFrame").
  # Readers that do not know `typeName` keep it as a generic value and can forward it.
  typeName @0 :Text;
  state @1 :Value;
}
