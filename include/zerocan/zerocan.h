// zerocan: remote apply calls over ZeroMQ with a Cap'n Proto envelope and zero-copy
// payload frames. The umbrella header; include the per-concern headers to pull less.
#pragma once

#include "zerocan/broker.h"
#include "zerocan/buffer.h"
#include "zerocan/client.h"
#include "zerocan/codec.h"
#include "zerocan/dtype.h"
#include "zerocan/engine.h"
#include "zerocan/error.h"
#include "zerocan/frames.h"
#include "zerocan/limits.h"
#include "zerocan/message.h"
#include "zerocan/policy.h"
#include "zerocan/registry.h"
#include "zerocan/remote_error.h"
#include "zerocan/stats.h"
#include "zerocan/tensor.h"
#include "zerocan/value.h"
#include "zerocan/version.h"
#include "zerocan/writer.h"
