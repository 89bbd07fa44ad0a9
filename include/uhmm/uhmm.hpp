// The umbrella header: everything an application uses.
#pragma once

#include "uhmm/advice.hpp"
#include "uhmm/backend.hpp"
#include "uhmm/buffer.hpp"
#include "uhmm/context.hpp"
#include "uhmm/counters.hpp"
#include "uhmm/error.hpp"
#include "uhmm/interval_notifier.hpp"
#include "uhmm/latency.hpp"
#include "uhmm/migrate.hpp"
#include "uhmm/range_snapshot.hpp"
#include "uhmm/types.hpp"
#include "uhmm/device_span.hpp"
#include "uhmm/launch.hpp"
#include "uhmm/launch_stream.hpp"
