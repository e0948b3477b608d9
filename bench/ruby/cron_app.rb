# frozen_string_literal: true

# A Sidekiq process with sidekiq-cron 2.x loaded and left at its defaults (a poll every 15-45 s):
# what a Rails app with recurring jobs runs today. Run under ../shared/peers/with-sidekiq 7.
require "sidekiq"
require "sidekiq-cron"

# Makes `count` schedules with sidekiq-cron's own API (`ruby cron_app.rb make COUNT`), each daily at
# 03:00, so none is due while an idle worker is measured.
if $PROGRAM_NAME == __FILE__ && ARGV[0] == "make"
  Integer(ARGV[1]).times do |i|
    Sidekiq::Cron::Job.create(name: "report #{i}", cron: "0 3 * * *", class: "NoopJob", args: [i]) or raise "not saved"
  end
end
