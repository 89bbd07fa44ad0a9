// The public migrate_vma API (include/uhmm/migrate.hpp) for drivers: each call
// defers signals, finds the context's mm core and runs the migrate layer's
// function on it.
#include "uhmm/context.hpp"
#include "uhmm/migrate.hpp"

#include "context_core.hpp"
#include "deferred_signals.hpp"
#include "migration.hpp"
#include "out_of_memory.hpp"

namespace uhmm {

void migrate_vma_setup(Context& ctx, MigrateVma& args) {
  detail::DeferSignals defer;
  detail::out_of_memory_as_error("migrate_vma_setup",
                                 [&] { detail::migrate_vma_setup(detail::core(ctx), args); });
}
std::size_t migrate_vma_pages(Context& ctx, MigrateVma& args) {
  detail::DeferSignals defer;
  return detail::out_of_memory_as_error("migrate_vma_pages",
                                        [&] { return detail::migrate_vma_pages(detail::core(ctx), args); });
}
// Pages whose host copy could not be dropped are reported through src[] (no
// MIGRATE), as the kernel reports pages it could not migrate.
void migrate_vma_finalize(Context& ctx, MigrateVma& args) {
  detail::DeferSignals defer;
  detail::out_of_memory_as_error("migrate_vma_finalize",
                                 [&] { (void)detail::migrate_vma_finalize(detail::core(ctx), args); });
}
std::size_t migrate_device_range(Context& ctx, OwnerId owner, DevicePageIndex first, std::size_t npages) {
  detail::DeferSignals defer;
  return detail::out_of_memory_as_error("migrate_device_range", [&] {
    return detail::migrate_device_range(detail::core(ctx), owner, first, npages);
  });
}

}  // namespace uhmm
