// Which kernel table runs: the best one this CPU supports, unless the user names another.
#pragma once

#include <string>
#include <vector>

#include "kernels.h"

namespace tritlm::kernels {

// CPU features relevant to the kernels, as names ("avx2", "fma", "neon", "dotprod", ...).
std::vector<std::string> cpu_features();

// Tables this build and this CPU can run, scalar first and the preferred one last.
std::vector<const KernelTable*> available_tables();

// The table named `isa`; throws std::invalid_argument naming the choices if it is unknown or
// this CPU cannot run it.
const KernelTable& table_named(const std::string& isa);

// The table kernels use when a call names none. Defaults to the last of available_tables().
const KernelTable& active_table();
void set_active_table(const std::string& isa);

}  // namespace tritlm::kernels
