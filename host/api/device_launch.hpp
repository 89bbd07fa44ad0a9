// The one implementation behind Context::launch and Context::launch_device:
// resolve the spans (bad input changes nothing), hold every page of every
// span on the device (launch_hold.hpp: migrated and LOCKED, or the launch
// fails having run nothing), take a launch stream from the device's pool,
// upload one device page table per span into the stream's device buffer, run
// the caller's body with the stream, drain the stream, release. Whatever the
// body or the device does, the stream is drained before the pages are
// released and the call returns or throws.
#pragma once

#include <cstddef>
#include <functional>
#include <span>

#include "uhmm/backend.hpp"
#include "uhmm/device_span.hpp"
#include "uhmm/launch_stream.hpp"

namespace uhmm::detail {

class Mm;

struct LaunchSpan {
  const void* data;
  std::size_t bytes;
  bool writable;  // the kernel may write it: read-mostly pages collapse to the device copy
};

using DeviceLaunchBody = std::function<void(const LaunchStream& stream, std::span<const DevicePageTable> tables)>;

// `call` names the public call in error messages ("launch", "launch_device").
void run_device_launch(Mm& ctx, OwnerId device, std::span<const LaunchSpan> spans, const char* call,
                       const DeviceLaunchBody& body);

}  // namespace uhmm::detail
