// Reading the SVG and HTML that dhp writes, for the picture tests (core and planner).
#pragma once

#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

namespace dhp::testing {

// Tags must nest: every <x ...> closed by </x>, self-closing <x .../> allowed. HTML's void
// element <meta> and the doctype count as closed.
inline bool tags_balanced(const std::string& text, std::string* why) {
  std::vector<std::string> open;
  std::size_t pos = 0;
  while ((pos = text.find('<', pos)) != std::string::npos) {
    const std::size_t end = text.find('>', pos);
    if (end == std::string::npos) {
      *why = "unterminated tag";
      return false;
    }
    const std::string tag = text.substr(pos + 1, end - pos - 1);
    pos = end + 1;
    if (tag.empty()) return false;
    const std::string name = tag.substr(0, tag.find_first_of(" \n"));
    if (tag[0] == '!' || name == "meta") continue;
    if (tag[0] == '/') {
      const std::string closing = tag.substr(1);
      if (open.empty() || open.back() != closing) {
        *why =
            "closing </" + closing + "> does not match " + (open.empty() ? "nothing" : open.back());
        return false;
      }
      open.pop_back();
    } else if (tag.back() != '/') {
      open.push_back(name);
    }
  }
  if (!open.empty()) *why = "unclosed <" + open.back() + ">";
  return open.empty();
}

inline int count(const std::string& text, const std::string& what) {
  int n = 0;
  for (std::size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
  return n;
}

// One drawn bar or legend swatch: its data-kind, fill and (bars) tooltip.
struct Swatch {
  std::string kind, fill, title;
};

// Bars: <rect data-kind=...>...<title>...</title></rect>; legend swatches: <rect
// class="legend" data-kind=...>.
inline std::vector<Swatch> bars(const std::string& svg) {
  std::vector<Swatch> out;
  const std::regex bar(
      "<rect data-kind=\"([a-z_]+)\"[^>]* fill=\"([^\"]+)\"[^>]*><title>([^<]*)</title></rect>");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), bar); it != std::sregex_iterator();
       ++it)
    out.push_back({(*it)[1].str(), (*it)[2].str(), (*it)[3].str()});
  return out;
}

inline std::vector<Swatch> legend(const std::string& svg) {
  std::vector<Swatch> out;
  const std::regex swatch("<rect class=\"legend\" data-kind=\"([a-z_]+)\"[^>]* fill=\"([^\"]+)\"");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), swatch); it != std::sregex_iterator();
       ++it)
    out.push_back({(*it)[1].str(), (*it)[2].str(), ""});
  return out;
}

// The text drawn on bars.
inline std::vector<std::string> bar_texts(const std::string& svg) {
  std::vector<std::string> out;
  const std::regex text("<text class=\"bar-text\"[^>]*>([^<]*)</text>");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), text); it != std::sregex_iterator();
       ++it)
    out.push_back((*it)[1].str());
  return out;
}

}  // namespace dhp::testing
