//! `sockleak top`: the report as a live table, worst groups first, refreshed every interval.
//!
//! Keys: up/down (or k/j) select a group, enter opens its creation stack and sockets, s cycles
//! the sort order, p pauses refreshing, q (or Esc, Ctrl-C) quits.
use std::{cmp::Reverse, io::IsTerminal};

use anyhow::{Result, bail};
use ratatui::{
    DefaultTerminal, Frame,
    crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style, Stylize},
    text::Line,
    widgets::{Block, Cell, Clear, Paragraph, Row, Table, TableState, Wrap},
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use crate::{
    config::TracerConfig,
    render::{
        escape::for_terminal,
        frames::plumbing_inside,
        text::{
            HANDLE_STACK, endpoints_line, folded_line, group_flags, group_states, human_bytes,
            human_ms, members_worst_first, placement, process_line, socket_line,
        },
    },
    report::{Group, GroupKey, Report},
    tracer::{self, Tracer},
};

pub async fn run(config: TracerConfig) -> Result<()> {
    if !std::io::stdout().is_terminal() {
        bail!("sockleak top draws on a terminal; for pipes and files use `sockleak trace`");
    }
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    // Attached before the screen switches, so errors print as plain lines.
    let mut tracer = Tracer::start(&config)?;
    let interval = config.interval;
    let mut view = View::new(interval, tracer.started.warnings.clone());

    // Terminal input blocks; a thread reads it and the loop selects on the channel.
    let (key_tx, mut keys) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        loop {
            let sent = match event::read() {
                Ok(Event::Key(key)) if key.kind != KeyEventKind::Release => key_tx.send(Some(key)),
                Ok(Event::Resize(..)) => key_tx.send(None),
                Ok(_) => Ok(()),
                Err(_) => return,
            };
            if sent.is_err() {
                return;
            }
        }
    });

    let mut terminal = ratatui::init();
    let result = async {
        let mut ticks = tracer::report_clock(interval);
        loop {
            draw(&mut terminal, &view)?;
            tokio::select! {
                followed = tracer.follow() => { followed?; continue }, // nothing to redraw
                _ = ticks.tick() => {
                    if !view.paused {
                        view.report = Some(tracer.report().await?);
                    }
                }
                key = keys.recv() => match key {
                    Some(Some(key)) => if view.on_key(key) == Flow::Quit { break },
                    Some(None) => {} // resized: redraw
                    None => break,   // no terminal input any more
                },
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
            }
        }
        Ok(())
    }
    .await;
    ratatui::restore();
    result
}

fn draw(terminal: &mut DefaultTerminal, view: &View) -> Result<()> {
    terminal.draw(|frame| view.render(frame))?;
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sort {
    /// Groups with the most verdicts first, then the biggest.
    Suspect,
    Count,
    Oldest,
    Queues,
    Memory,
}

impl Sort {
    fn next(self) -> Self {
        match self {
            Sort::Suspect => Sort::Count,
            Sort::Count => Sort::Oldest,
            Sort::Oldest => Sort::Queues,
            Sort::Queues => Sort::Memory,
            Sort::Memory => Sort::Suspect,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Sort::Suspect => "suspect",
            Sort::Count => "count",
            Sort::Oldest => "oldest",
            Sort::Queues => "queues",
            Sort::Memory => "memory",
        }
    }

    fn order(self, groups: &mut [&Group]) {
        match self {
            Sort::Suspect => groups.sort_by_key(|g| (Reverse(g.flags.len()), Reverse(g.count))),
            Sort::Count => groups.sort_by_key(|g| Reverse(g.count)),
            Sort::Oldest => groups.sort_by_key(|g| Reverse(g.oldest_age_ms)),
            Sort::Queues => groups.sort_by_key(|g| Reverse(g.rx_queue + g.tx_queue)),
            Sort::Memory => groups.sort_by_key(|g| Reverse(g.memory_bytes)),
        }
    }
}

#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Quit,
}

struct View {
    report: Option<Report>,
    interval: std::time::Duration,
    warnings: Vec<String>,
    sort: Sort,
    /// The group the user moved to, followed by identity across refreshes (its row moves as it
    /// grows); until then, and when it is gone, the top row.
    selected: Option<GroupKey>,
    detail: bool,
    paused: bool,
}

impl View {
    fn new(interval: std::time::Duration, warnings: Vec<String>) -> Self {
        Self {
            report: None,
            interval,
            warnings,
            sort: Sort::Suspect,
            selected: None,
            detail: false,
            paused: false,
        }
    }

    /// The groups in display order.
    fn groups(&self) -> Vec<&Group> {
        let mut groups: Vec<&Group> = self.report.iter().flat_map(|r| &r.groups).collect();
        self.sort.order(&mut groups);
        groups
    }

    fn selected_index(&self, groups: &[&Group]) -> Option<usize> {
        let key = self.selected.as_ref()?;
        groups.iter().position(|g| &g.key == key)
    }

    fn on_key(&mut self, key: KeyEvent) -> Flow {
        let ctrl_c =
            key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c');
        match key.code {
            _ if ctrl_c => return Flow::Quit,
            KeyCode::Char('q') => return Flow::Quit,
            KeyCode::Esc if self.detail => self.detail = false,
            KeyCode::Esc => return Flow::Quit,
            KeyCode::Enter => self.detail = !self.detail,
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('p') => self.paused = !self.paused,
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::Home => self.move_selection(isize::MIN),
            _ => {}
        }
        Flow::Continue
    }

    fn move_selection(&mut self, by: isize) {
        let groups = self.groups();
        if groups.is_empty() {
            self.selected = None;
            return;
        }
        let at = self
            .selected_index(&groups)
            .unwrap_or(0)
            .saturating_add_signed(by)
            .min(groups.len() - 1);
        self.selected = Some(groups[at].key.clone());
    }

    fn render(&self, frame: &mut Frame) {
        let [header, body, footer] = Layout::vertical([
            Constraint::Length(2),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        frame.render_widget(Paragraph::new(self.header_lines()), header);
        let groups = self.groups();
        let index = self
            .selected_index(&groups)
            .or((!groups.is_empty()).then_some(0));
        let table = group_table(&groups);
        let mut state = TableState::default().with_selected(index);
        frame.render_stateful_widget(table, body, &mut state);
        frame.render_widget(
            Paragraph::new("↑/↓ select  enter stack & sockets  s sort  p pause  q quit".dim()),
            footer,
        );
        if self.detail
            && let Some(i) = index
        {
            let area = inset(body, 2, 1);
            frame.render_widget(Clear, area);
            frame.render_widget(self.detail_of(groups[i]), area);
        }
    }

    fn header_lines(&self) -> Vec<Line<'static>> {
        let Some(r) = &self.report else {
            return vec![Line::from("sockleak top: waiting for the first report")];
        };
        let st = &r.stats;
        let mut first = format!(
            "sockleak top · {} open sockets in {} groups · table {} · events {} seen, {} lost · every {} · sort: {}",
            r.sockets.len(),
            r.groups.len(),
            st.open_sockets,
            st.table.events_seen,
            st.kernel.events_lost,
            human_ms(self.interval.as_millis() as u64),
            self.sort.name(),
        );
        if self.paused {
            first.push_str(" · PAUSED");
        }
        let second = if st.kernel.events_lost > 0 || st.table.dropped_table_full > 0 {
            Line::from(format!(
                "warning: {} events lost, {} sockets not tracked (table full): counts heal at the next reconciliation",
                st.kernel.events_lost, st.table.dropped_table_full
            ))
            .yellow()
        } else if let Some(w) = self.warnings.first() {
            Line::from(format!("note: {w}")).dim()
        } else {
            Line::from("")
        };
        vec![Line::from(first).bold(), second]
    }

    fn detail_of(&self, g: &Group) -> Paragraph<'static> {
        let mut lines = vec![
            Line::from(format!(
                "{} sockets of {} ({}) from {}",
                g.count,
                for_terminal(&g.key.comm),
                g.key.pid,
                for_terminal(&g.key.site.to_string())
            ))
            .bold(),
        ];
        if let Some(line) = placement(g) {
            lines.push(Line::from(line));
        }
        if let Some(growth) = &g.growth {
            lines
                .push(Line::from(format!("growing by {:.1} sockets/min", growth.per_minute)).red());
        }
        let members = self
            .report
            .as_ref()
            .map(|report| members_worst_first(report, g))
            .unwrap_or_default();
        let found_open = members.iter().any(|s| !s.origin.traced());
        for line in [process_line(g, found_open), endpoints_line(g)]
            .into_iter()
            .flatten()
        {
            lines.push(Line::from(line));
        }
        lines.push(Line::from(""));
        let frames = g.key.stack.frames();
        if let Some(why) = g.key.stack.why_no_frames() {
            lines.push(Line::from(why).dim());
        } else {
            lines.push(Line::from("created at (innermost first):").bold());
            if g.handle_stack {
                lines.push(Line::from(format!("  {HANDLE_STACK}")).dim());
            }
            if let Some(folded) = folded_line(frames) {
                lines.push(Line::from(format!("  {folded}")).dim());
            }
            for frame in &frames[plumbing_inside(frames)..] {
                lines.push(Line::from(format!("  {}", for_terminal(frame))));
            }
        }
        if let Some(note) = &g.stack_note {
            lines.push(Line::from(format!("({})", for_terminal(note))).dim());
        }
        lines.push(Line::from(""));
        lines.push(Line::from("sockets (flagged first):").bold());
        for s in members.iter().take(50) {
            lines.push(Line::from(format!("  {}", socket_line(s))));
        }
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" group (enter or esc to close) "))
    }
}

fn group_table(groups: &[&Group]) -> Table<'static> {
    let header = Row::new(
        [
            "COUNT", "PID", "COMM", "SITE", "OLDEST", "RX_Q", "TX_Q", "MEM", "FLAGS", "STATES",
        ]
        .map(Cell::from),
    )
    .style(Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED));
    let rows = groups.iter().map(|g| {
        let row = Row::new(vec![
            Cell::from(g.count.to_string()),
            Cell::from(g.key.pid.to_string()),
            Cell::from(for_terminal(&g.key.comm)),
            Cell::from(for_terminal(&g.key.site.to_string())),
            Cell::from(human_ms(g.oldest_age_ms)),
            Cell::from(g.rx_queue.to_string()),
            Cell::from(g.tx_queue.to_string()),
            Cell::from(human_bytes(g.memory_bytes)),
            Cell::from(group_flags(g)),
            Cell::from(group_states(g)),
        ]);
        if g.flags.is_empty() { row } else { row.red() }
    });
    Table::new(
        rows,
        [
            Constraint::Length(6),
            Constraint::Length(8),
            Constraint::Length(16),
            Constraint::Length(22),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(22),
            Constraint::Min(10),
        ],
    )
    .header(header)
    .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
    .highlight_symbol("> ")
}

fn inset(area: Rect, x: u16, y: u16) -> Rect {
    Rect {
        x: area.x + x.min(area.width / 2),
        y: area.y + y.min(area.height / 2),
        width: area.width.saturating_sub(2 * x),
        height: area.height.saturating_sub(2 * y),
    }
}
