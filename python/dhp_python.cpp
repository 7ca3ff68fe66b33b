// dhp._dhp: thin bindings of the planner, the simulator, the pictures and the batch data
// loaders. They check their arguments and dispatch; descriptions cross as the JSON text of
// docs/schemas.md (python/dhp/__init__.py checks Python values, names bad fields by their
// path, and turns the text into dicts). `root` arguments name the document in error
// messages ("batch" -> "batch.samples[3].visuals[0].tokens=0 must be in [1, ...]").
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "dhp/dataset.hpp"
#include "dhp/encoder_geometry.hpp"
#include "dhp/error.hpp"
#include "dhp/io.hpp"
#include "dhp/plan_svg.hpp"
#include "dhp/planner.hpp"
#include "dhp/simulator.hpp"
#include "errors.hpp"

namespace py = pybind11;

namespace {

dhp::EncoderPlacement placement_from(const std::string& placement) {
  if (placement == "colocated") return dhp::EncoderPlacement::Colocated;
  if (placement == "disjoint") return dhp::EncoderPlacement::Disjoint;
  DHP_THROW(InvalidArgument, "placement='{}': expected 'colocated' or 'disjoint'", placement);
}

dhp::PlannerOptions make_options(const std::string& strategy, int llm_tp, int encoder_tp,
                                 const std::string& placement, int encoder_devices, int max_waves,
                                 bool split_visual_items) {
  DHP_CHECK(llm_tp >= 0, InvalidArgument, "llm_tp={}: expected >= 1 (0: chosen per model)", llm_tp);
  DHP_CHECK(encoder_tp >= 0, InvalidArgument, "encoder_tp={}: expected >= 1 (0: chosen per model)",
            encoder_tp);
  DHP_CHECK(encoder_devices >= 0, InvalidArgument,
            "encoder_devices={}: expected >= 1 (0: chosen by the planner)", encoder_devices);
  DHP_CHECK(max_waves >= 1, InvalidArgument, "max_waves={}: expected >= 1", max_waves);
  dhp::PlannerOptions options;
  options.strategy = dhp::strategy_from_string(strategy);
  options.llm_tp = llm_tp;
  options.encoder_tp = encoder_tp;
  options.placement = placement_from(placement);
  options.encoder_devices = encoder_devices;
  options.max_waves = max_waves;
  options.split_visual_items = split_visual_items;
  return options;
}

py::dict simulation_to_dict(const dhp::SimulationResult& r) {
  py::dict d;
  d["step_ms"] = r.step_ms;
  d["mean_idle_fraction"] = r.mean_idle_fraction;
  d["max_peak_mem_gib"] = r.max_peak_mem_gib;
  d["mem_capacity_gib"] = r.mem_capacity_gib;
  d["device_busy_ms"] = r.device_busy_ms;
  d["device_idle_fraction"] = r.device_idle_fraction;
  d["device_peak_mem_gib"] = r.device_peak_mem_gib;
  return d;
}

// The batch and the plan of a simulation, the plan checked against the batch as the
// caller's input (a plan that does not fit its batch is the caller's error, not dhp's).
struct Checked {
  dhp::Batch batch;
  dhp::Plan plan;
};

Checked checked(const std::string& batch_json, const std::string& plan_json) {
  Checked c{dhp::batch_from_json(batch_json, "batch"), dhp::plan_from_json(plan_json, "plan")};
  dhp::validate(c.plan, c.batch, dhp::ErrorKind::InvalidArgument);
  return c;
}

std::vector<dhp::Sample> dataset_samples(const std::string& name, const std::string& path) {
  const std::string file = path.empty() ? dhp::default_data_path(name) : path;
  const dhp::DatasetAssumptions assumptions;
  if (name == "activitynet") return dhp::load_activitynet(file, assumptions);
  if (name == "mathvista") return dhp::load_mathvista(file, assumptions);
  if (name == "llava_cc3m") return dhp::load_llava_cc3m(file, assumptions);
  if (name == "narrativeqa") return dhp::load_narrativeqa(file, assumptions);
  DHP_THROW(InvalidArgument,
            "dataset '{}': expected activitynet, mathvista, llava_cc3m or narrativeqa", name);
}

}  // namespace

PYBIND11_MODULE(_dhp, m) {
  m.doc() =
      "The C++ core of dhp (planner, simulator, pictures, data loaders). Use the `dhp` "
      "package: it checks Python values and converts them; this module takes JSON text.";
  dhp_python::register_error_translator();

  m.def("cluster_preset_names", &dhp::cluster_preset_names, "Names of the cluster presets.");
  m.def("model_preset_names", &dhp::model_preset_names, "Names of the model presets.");
  m.def(
      "strategy_names",
      [] {
        std::vector<std::string> names;
        for (auto s : dhp::all_strategies()) names.emplace_back(dhp::to_string(s));
        return names;
      },
      "Names of the planning strategies (dhp and the baselines).");
  m.def(
      "cluster_json",
      [](const std::string& preset_or_path) {
        return dhp::to_json(dhp::load_cluster(preset_or_path));
      },
      py::arg("preset_or_path"), "The cluster of a preset name or JSON file, as JSON text.");
  m.def(
      "model_json",
      [](const std::string& preset_or_path) {
        return dhp::to_json(dhp::load_model(preset_or_path));
      },
      py::arg("preset_or_path"), "The model of a preset name or JSON file, as JSON text.");
  m.def(
      "cluster_from_json",
      [](const std::string& text, const std::string& root) {
        return dhp::to_json(dhp::cluster_from_json(text, root));
      },
      py::arg("text"), py::arg("root") = "cluster",
      "Parses and validates a cluster JSON; returns it normalised.");
  m.def(
      "model_from_json",
      [](const std::string& text, const std::string& root) {
        return dhp::to_json(dhp::model_from_json(text, root));
      },
      py::arg("text"), py::arg("root") = "model",
      "Parses and validates a model JSON; returns it normalised.");
  m.def(
      "batch_from_json",
      [](const std::string& text, const std::string& root) {
        return dhp::to_json(dhp::batch_from_json(text, root), -1);
      },
      py::arg("text"), py::arg("root") = "batch",
      "Parses and validates a batch JSON; returns it normalised.");
  m.def(
      "plan_from_json",
      [](const std::string& text, const std::string& root) {
        return dhp::to_json(dhp::plan_from_json(text, root), -1);
      },
      py::arg("text"), py::arg("root") = "plan",
      "Parses a plan JSON; returns it normalised (not checked against a batch).");
  m.def(
      "validate_plan",
      [](const std::string& batch_json, const std::string& plan_json) {
        (void)checked(batch_json, plan_json);
      },
      py::arg("batch_json"), py::arg("plan_json"),
      "Checks a plan against its batch; raises InvalidArgumentError naming what is wrong.");
  m.def(
      "load_batches",
      [](const std::string& path) { return dhp::to_json(dhp::load_batches(path), -1); },
      py::arg("path"), "The batches of a batch file (one batch or a stream), as JSON text.");
  m.def(
      "dataset_samples",
      [](const std::string& name, const std::string& path) {
        dhp::Batch all;
        all.samples = dataset_samples(name, path);
        return dhp::to_json(all, -1);
      },
      py::arg("name"), py::arg("path") = "",
      "The samples of a length data set as a batch JSON (path '': the default file).");
  m.def(
      "make_batches",
      [](const std::string& samples_batch_json, int num_batches, int samples_per_batch,
         std::uint64_t seed) {
        DHP_CHECK(num_batches >= 1, InvalidArgument, "num_batches={}: expected >= 1", num_batches);
        DHP_CHECK(samples_per_batch >= 1, InvalidArgument, "samples_per_batch={}: expected >= 1",
                  samples_per_batch);
        const dhp::Batch pool = dhp::batch_from_json(samples_batch_json, "samples");
        return dhp::to_json(dhp::make_batches(pool.samples, num_batches, samples_per_batch, seed),
                            -1);
      },
      py::arg("samples_batch_json"), py::arg("num_batches"), py::arg("samples_per_batch"),
      py::arg("seed"), "Cuts a sample pool into seeded batches; returns a batch stream JSON.");

  m.def(
      "plan_hash",
      [](const std::string& plan_json) {
        return dhp::plan_hash(dhp::plan_from_json(plan_json, "plan"));
      },
      py::arg("plan_json"), "The 64-bit hash of a plan that the runtime agrees on across ranks.");
  m.def(
      "encoder_span_tokens",
      [](const std::string& model_json, std::int64_t patches, std::int64_t tokens, int frames) {
        const dhp::ModelSpec model = dhp::model_from_json(model_json, "model");
        DHP_CHECK(model.encoder.has_value(), InvalidArgument,
                  "model '{}' has no encoder (model.encoder is null)", model.name);
        dhp::VisualItem item;
        item.patches = patches;
        item.llm_tokens = tokens;
        item.frames = frames;
        return dhp::item_part_rows(*model.encoder, item, 0, 1).span_tokens;
      },
      py::arg("model_json"), py::arg("patches"), py::arg("tokens"), py::arg("frames"),
      "Token offsets of the attention spans of an item encoded whole (spans + 1 values).");

  py::class_<dhp::Planner>(m, "Planner", "The C++ planner (use dhp.Planner).")
      .def(py::init([](const std::string& cluster_json, const std::string& model_json,
                       const std::string& strategy, int llm_tp, int encoder_tp,
                       const std::string& placement, int encoder_devices, int max_waves,
                       bool split_visual_items) {
             return dhp::Planner(dhp::cluster_from_json(cluster_json, "cluster"),
                                 dhp::model_from_json(model_json, "model"),
                                 make_options(strategy, llm_tp, encoder_tp, placement,
                                              encoder_devices, max_waves, split_visual_items));
           }),
           py::arg("cluster_json"), py::arg("model_json"), py::arg("strategy") = "dhp",
           py::arg("llm_tp") = 0, py::arg("encoder_tp") = 0, py::arg("placement") = "colocated",
           py::arg("encoder_devices") = 0, py::arg("max_waves") = 256,
           py::arg("split_visual_items") = true)
      .def(
          "plan",
          [](const dhp::Planner& self, const std::string& batch_json) {
            const dhp::Batch batch = dhp::batch_from_json(batch_json, "batch");
            dhp::Plan plan;
            {
              py::gil_scoped_release release;  // planning is pure C++
              plan = self.plan(batch);
            }
            return dhp::to_json(plan, -1);
          },
          py::arg("batch_json"), "Plans one batch; returns the plan as JSON text.")
      .def(
          "simulate",
          [](const dhp::Planner& self, const std::string& batch_json,
             const std::string& plan_json) {
            const Checked c = checked(batch_json, plan_json);
            return simulation_to_dict(dhp::Simulator(self.cost_model()).run(c.plan, c.batch));
          },
          py::arg("batch_json"), py::arg("plan_json"))
      .def(
          "svg",
          [](const dhp::Planner& self, const std::string& batch_json,
             const std::string& plan_json) {
            const Checked c = checked(batch_json, plan_json);
            const auto result = dhp::Simulator(self.cost_model()).run(c.plan, c.batch, true);
            return dhp::plan_to_svg(c.plan, c.batch, result);
          },
          py::arg("batch_json"), py::arg("plan_json"));
}
