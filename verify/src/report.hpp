#pragma once
// gdr2-verify's outputs: the human table (target x property) and the JSON report (same rows plus every failing
// case with its tensors' errors, repro file and replay command).
#include <cstdio>
#include <string>
#include <vector>
#include <nlohmann/json.hpp>
#include "properties.hpp"

namespace gdr2v {

void print_table(std::FILE* out, const std::vector<PropertyResult>& rows);
void print_failures(std::FILE* out, const std::vector<PropertyResult>& rows);
void print_tolerances(std::FILE* out, const std::vector<PropertyResult>& rows);
nlohmann::json to_json(const std::vector<PropertyResult>& rows);
// 0: every property held; 1: a counterexample; 2: an infrastructure error (port crash, hang, garbage...).
int exit_code(const std::vector<PropertyResult>& rows);

}  // namespace gdr2v
