//! The sections of a Markdown file a reference may point at: its headings (outside fenced code)
//! with their GitHub slugs, and its explicit anchors (`<a id="...">`, `<a name="...">`,
//! `{#...}`).

use std::collections::HashSet;

use super::extract::Section;

pub struct Sections {
    /// Heading texts as written, without the leading `#`s.
    headings: Vec<String>,
    /// Heading slugs and explicit anchors.
    anchors: HashSet<String>,
}

/// GitHub's heading slug: lower-case; letters, digits, `_`, `-` and spaces kept, every other
/// character dropped; spaces become `-`.
pub fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '_' || *c == '-' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

impl Sections {
    pub fn of(markdown: &str) -> Sections {
        let mut headings = Vec::new();
        let mut anchors = HashSet::new();
        let mut in_fence = false;
        for line in markdown.lines() {
            if line.trim_start().starts_with("```") {
                in_fence = !in_fence;
                continue;
            }
            if in_fence {
                continue;
            }
            for (open, close) in [("<a id=\"", "\""), ("<a name=\"", "\""), ("{#", "}")] {
                for (at, _) in line.match_indices(open) {
                    let rest = &line[at + open.len()..];
                    if let Some(end) = rest.find(close) {
                        anchors.insert(rest[..end].to_string());
                    }
                }
            }
            let hashes = line.chars().take_while(|&c| c == '#').count();
            if (1..=6).contains(&hashes) && line[hashes..].starts_with(' ') {
                let text = line[hashes..].trim().trim_end_matches('#').trim();
                // A repeated heading gets `-1`, `-2`, ... as on GitHub.
                let base = slug(text);
                let mut name = base.clone();
                let mut n = 0;
                while anchors.contains(&name) {
                    n += 1;
                    name = format!("{base}-{n}");
                }
                anchors.insert(name);
                headings.push(text.to_string());
            }
        }
        Sections { headings, anchors }
    }

    pub fn has(&self, section: &Section) -> bool {
        match section {
            Section::Anchor(a) => self.anchors.contains(a),
            Section::Number(n) => {
                let digits = &n["§".len()..];
                self.anchors.contains(&format!("s{digits}"))
                    || self.headings.iter().any(|h| {
                        h.match_indices(n.as_str()).any(|(at, _)| {
                            !h[at + n.len()..].starts_with(|c: char| c.is_ascii_digit())
                        })
                    })
            }
            Section::Heading(text) => {
                let wanted = slug(text);
                self.headings.iter().any(|h| slug(h) == wanted)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_follow_github() {
        assert_eq!(slug("Self-play step"), "self-play-step");
        assert_eq!(slug("Planned, not built"), "planned-not-built");
        assert_eq!(slug("§3 Objectives"), "3-objectives");
        assert_eq!(
            slug("Bradley–Terry reward loss"),
            "bradleyterry-reward-loss"
        );
        assert_eq!(slug("`worker/src`"), "workersrc");
    }

    #[test]
    fn sections_by_anchor_number_and_heading() {
        let md = "# T\n<a id=\"s1\"></a>\n## §1 One\n## §12 Twelve\n### Data\n## Data\n```\n# not\n```\n";
        let s = Sections::of(md);
        for ok in [
            Section::Anchor("s1".into()),
            Section::Anchor("data".into()),
            Section::Anchor("data-1".into()),
            Section::Number("§1".into()),
            Section::Number("§12".into()),
            Section::Heading("data".into()),
        ] {
            assert!(s.has(&ok), "{ok:?}");
        }
        for bad in [
            Section::Anchor("not".into()),
            Section::Anchor("one".into()),
            Section::Number("§2".into()),
            Section::Heading("Twelve".into()),
        ] {
            assert!(!s.has(&bad), "{bad:?}");
        }
    }
}
