// A per-op CPU time profile of everything libtorch runs on this thread (and the autograd
// work it starts) between ftedit_profile_start and ftedit_profile_stop: libtorch's Kineto
// profiler (what torch.profiler runs), summed by op name (and by name and input shapes)
// into a tab-separated table. tch does not reach the profiler.
#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace prof = torch::autograd::profiler;
namespace impl = torch::profiler::impl;

struct Totals {
  int64_t calls = 0;
  double self_us = 0;
  double total_us = 0;
};

std::string shapes_of(const prof::KinetoEvent& e) {
  std::ostringstream s;
  bool first = true;
  for (const auto& shape : e.shapes()) {
    if (shape.empty()) continue;
    s << (first ? "" : " ") << "[";
    for (size_t i = 0; i < shape.size(); ++i) s << (i ? "," : "") << shape[i];
    s << "]";
    first = false;
  }
  return s.str();
}

void write_table(std::ofstream& out, const char* title, const char* key,
                 const std::map<std::string, Totals>& by, double all_self, size_t limit) {
  std::vector<std::pair<std::string, Totals>> rows(by.begin(), by.end());
  std::sort(rows.begin(), rows.end(),
            [](const auto& a, const auto& b) { return a.second.self_us > b.second.self_us; });
  out << "# " << title << "\n" << key << "\tcalls\tself_ms\ttotal_ms\tself_percent\n";
  for (size_t i = 0; i < rows.size() && i < limit; ++i) {
    const auto& [name, t] = rows[i];
    out << name << "\t" << t.calls << "\t" << t.self_us / 1000.0 << "\t" << t.total_us / 1000.0
        << "\t" << (all_self > 0 ? 100.0 * t.self_us / all_self : 0.0) << "\n";
  }
}

}  // namespace

extern "C" {

// Starts recording CPU ops with their input shapes. Returns 0, or -1 on failure.
int ftedit_profile_start() {
  try {
    impl::ProfilerConfig config(impl::ProfilerState::KINETO, /*report_input_shapes=*/true);
    std::set<impl::ActivityType> activities{impl::ActivityType::CPU};
    prof::prepareProfiler(config, activities);
    prof::enableProfiler(config, activities);
    return 0;
  } catch (...) {
    return -1;
  }
}

// Stops recording and writes the table to `path`: ops by self time (time not spent in
// the ops they called), then the 60 heaviest (op, input shapes) pairs. Returns 0, or -1.
int ftedit_profile_stop(const char* path) {
  try {
    auto result = prof::disableProfiler();
    // Events nest by time on each thread: sort by start (the longer first on a tie) and
    // keep the open ones on a stack.
    std::map<uint64_t, std::vector<const prof::KinetoEvent*>> threads;
    for (const auto& e : result->events()) threads[e.startThreadId()].push_back(&e);
    std::map<std::string, Totals> by_name, by_shape;
    double all_self = 0;
    for (auto& [tid, events] : threads) {
      std::sort(events.begin(), events.end(), [](auto* a, auto* b) {
        return a->startNs() != b->startNs() ? a->startNs() < b->startNs()
                                            : a->durationNs() > b->durationNs();
      });
      struct Open {
        const prof::KinetoEvent* e;
        double child_us;
      };
      std::vector<Open> stack;
      auto close = [&](const Open& o) {
        double us = o.e->durationNs() / 1000.0;
        double self = std::max(0.0, us - o.child_us);
        std::string name = o.e->name();
        for (auto* t : {&by_name[name], &by_shape[name + "\t" + shapes_of(*o.e)]}) {
          t->calls += 1;
          t->self_us += self;
          t->total_us += us;
        }
        all_self += self;
      };
      for (auto* e : events) {
        while (!stack.empty() && stack.back().e->endNs() <= e->startNs()) {
          close(stack.back());
          stack.pop_back();
        }
        if (!stack.empty()) stack.back().child_us += e->durationNs() / 1000.0;
        stack.push_back({e, 0});
      }
      while (!stack.empty()) {
        close(stack.back());
        stack.pop_back();
      }
    }
    std::ofstream out(path);
    if (!out) return -1;
    write_table(out, "by op", "op", by_name, all_self, by_name.size());
    out << "\n";
    write_table(out, "by op and input shapes", "op\tshapes", by_shape, all_self, 60);
    return out.good() ? 0 : -1;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
