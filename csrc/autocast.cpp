// Autocast on a chosen device type. tch 0.24 reaches only the deprecated device-less
// calls (CUDA's autocast); mixed precision on the CPU needs the per-device ones.
#include <ATen/autocast_mode.h>

namespace {
c10::DeviceType device_type(int cuda) { return cuda ? at::kCUDA : at::kCPU; }
}  // namespace

extern "C" {

// Enables autocast to bf16 (half = 0) or f16 (half = 1) on the device type and enters
// one nesting level. Returns the previous state for ftedit_autocast_exit (bit 0:
// enabled; bits 8..: the previous dtype), or -1 on failure.
int ftedit_autocast_enter(int cuda, int half) {
  try {
    auto d = device_type(cuda);
    int was = at::autocast::is_autocast_enabled(d) ? 1 : 0;
    was |= static_cast<int>(at::autocast::get_autocast_dtype(d)) << 8;
    at::autocast::set_autocast_enabled(d, true);
    at::autocast::set_autocast_dtype(d, half ? at::kHalf : at::kBFloat16);
    at::autocast::increment_nesting();
    return was;
  } catch (...) {
    return -1;
  }
}

// Leaves the nesting level (dropping the cast cache at the outermost) and restores the
// state ftedit_autocast_enter returned.
int ftedit_autocast_exit(int cuda, int was) {
  try {
    auto d = device_type(cuda);
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(d, (was & 1) != 0);
    at::autocast::set_autocast_dtype(d, static_cast<at::ScalarType>(was >> 8));
    return 0;
  } catch (...) {
    return -1;
  }
}

// Switches autocast on the device type on (on = 1) or off (on = 0), or only asks (on =
// -1), keeping the dtype, nesting and cast cache. Returns whether it was on, or -1.
int ftedit_autocast_set_enabled(int cuda, int on) {
  try {
    auto d = device_type(cuda);
    int was = at::autocast::is_autocast_enabled(d) ? 1 : 0;
    if (on >= 0) at::autocast::set_autocast_enabled(d, on != 0);
    return was;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
