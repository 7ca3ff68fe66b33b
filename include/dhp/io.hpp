// JSON readers and writers for the public descriptions (schemas in docs/schemas.md).
// Readers throw dhp::Error (InvalidInput) naming the JSON path and the offending value.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "dhp/batch.hpp"
#include "dhp/cluster.hpp"
#include "dhp/model.hpp"
#include "dhp/plan.hpp"

namespace dhp {

std::string read_text_file(const std::string& path);
void write_text_file(const std::string& path, std::string_view text);

ClusterSpec cluster_from_json(std::string_view text);
ModelSpec model_from_json(std::string_view text);
Batch batch_from_json(std::string_view text);
// A batch stream: {"batches": [batch, ...]} or a bare array of batches.
std::vector<Batch> batches_from_json(std::string_view text);
Plan plan_from_json(std::string_view text);
// The same readers with `root` naming the document in their messages: root "batch" gives
// "batch.samples[3].visuals[0].tokens=0 must be in [1, ...]" (the Python bindings use it).
ClusterSpec cluster_from_json(std::string_view text, const std::string& root);
ModelSpec model_from_json(std::string_view text, const std::string& root);
Batch batch_from_json(std::string_view text, const std::string& root);
Plan plan_from_json(std::string_view text, const std::string& root);

std::string to_json(const ClusterSpec& cluster, int indent = 2);
std::string to_json(const ModelSpec& model, int indent = 2);
std::string to_json(const Batch& batch, int indent = 2);
std::string to_json(const std::vector<Batch>& batches, int indent = -1);
std::string to_json(const Plan& plan, int indent = 2);

// A preset name ("h100-64") or a path to a JSON file.
ClusterSpec load_cluster(const std::string& preset_or_path);
ModelSpec load_model(const std::string& preset_or_path);
// A batch file: one batch, or a stream of them (the forms of batches_from_json).
std::vector<Batch> load_batches(const std::string& path);

}  // namespace dhp
